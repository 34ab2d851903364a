// What the two translation units of the ODR test show each other.
#pragma once

#include <string>
#include <string_view>

const void* odr_dtype_table_a();
std::string odr_describe_a(std::string_view dtype_name);
