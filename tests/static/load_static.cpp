// Compile-time checks of the load/ concepts: what a copy engine must provide (a type that
// lacks one hook is not an engine), which engines fill device memory, and which tensor
// factories name a device.
#include <safeshard/load/engine.hpp>
#include <safeshard/load/host_engine.hpp>
#include <safeshard/load/tensor_factory.hpp>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace {

using namespace safeshard;

// Every hook, filling host memory; each type below leaves one out.
struct host_like {
    static constexpr device_kind memory = device_kind::host;
    void bind(const copy_targets&) {}
    void submit(std::span<const copy_op>) {}
    void wait() {}
    void set_progress(progress_callback) {}
    [[nodiscard]] engine_stats stats() const { return {}; }
    [[nodiscard]] device target_device() const { return {}; }
    [[nodiscard]] read_options reader_options() const { return {}; }
    void set_names(std::span<const std::string>) {}
    [[nodiscard]] std::vector<std::string> take_notes() { return {}; }
};

struct no_wait {
    static constexpr device_kind memory = device_kind::host;
    void bind(const copy_targets&) {}
    void submit(std::span<const copy_op>) {}
    void set_progress(progress_callback) {}
    [[nodiscard]] engine_stats stats() const { return {}; }
    [[nodiscard]] device target_device() const { return {}; }
    [[nodiscard]] read_options reader_options() const { return {}; }
    void set_names(std::span<const std::string>) {}
    [[nodiscard]] std::vector<std::string> take_notes() { return {}; }
};

struct no_memory_kind {
    void bind(const copy_targets&) {}
    void submit(std::span<const copy_op>) {}
    void wait() {}
    void set_progress(progress_callback) {}
    [[nodiscard]] engine_stats stats() const { return {}; }
    [[nodiscard]] device target_device() const { return {}; }
    [[nodiscard]] read_options reader_options() const { return {}; }
    void set_names(std::span<const std::string>) {}
    [[nodiscard]] std::vector<std::string> take_notes() { return {}; }
};

struct no_reader_options {
    static constexpr device_kind memory = device_kind::host;
    void bind(const copy_targets&) {}
    void submit(std::span<const copy_op>) {}
    void wait() {}
    void set_progress(progress_callback) {}
    [[nodiscard]] engine_stats stats() const { return {}; }
    [[nodiscard]] device target_device() const { return {}; }
    void set_names(std::span<const std::string>) {}
    [[nodiscard]] std::vector<std::string> take_notes() { return {}; }
};

struct no_notes {
    static constexpr device_kind memory = device_kind::host;
    void bind(const copy_targets&) {}
    void submit(std::span<const copy_op>) {}
    void wait() {}
    void set_progress(progress_callback) {}
    [[nodiscard]] engine_stats stats() const { return {}; }
    [[nodiscard]] device target_device() const { return {}; }
    [[nodiscard]] read_options reader_options() const { return {}; }
    void set_names(std::span<const std::string>) {}
};

// Fills device memory and can upload: a device engine.
struct device_like : host_like {
    static constexpr device_kind memory = device_kind::cuda;
    [[nodiscard]] device target_device() const { return {device_kind::cuda, 0}; }
    void upload(std::byte*, std::span<const std::byte>) {}
};

// Fills device memory and cannot upload: an engine, but neither a host nor a device one, so
// the loader refuses it (check_copy_engine) instead of writing created parameters with the
// CPU into device pointers.
struct device_without_upload : host_like {
    static constexpr device_kind memory = device_kind::cuda;
    [[nodiscard]] device target_device() const { return {device_kind::cuda, 0}; }
};

static_assert(copy_engine<host_like> && host_copy_engine<host_like>);
static_assert(!device_copy_engine<host_like>);
static_assert(!copy_engine<no_wait> && !copy_engine_core<no_wait>);
static_assert(!copy_engine<no_memory_kind> && !copy_engine_names_memory<no_memory_kind>);
static_assert(!copy_engine<no_reader_options>);
static_assert(!copy_engine<no_notes> && !copy_engine_reports<no_notes>);
static_assert(device_copy_engine<device_like> && !host_copy_engine<device_like>);
static_assert(copy_engine<device_without_upload>);
static_assert(!host_copy_engine<device_without_upload> &&
              !device_copy_engine<device_without_upload>);
static_assert(host_copy_engine<host_engine> && !device_copy_engine<host_engine>);
static_assert(host_engine::target_device() == device{});

struct on_device {
    std::byte* p = nullptr;
};
struct names_device_only {
    std::byte* p = nullptr;
};
struct host_only {
    std::byte* p = nullptr;
};

}  // namespace

template <>
struct safeshard::tensor_factory<on_device> {
    static on_device allocate(const tensor_request&) { return {}; }
    static std::byte* data(on_device& t) { return t.p; }
    static std::size_t size_bytes(const on_device&) { return 0; }
    static constexpr device default_device() { return {device_kind::cuda, 0}; }
    static device_like make_engine(const device&) { return {}; }
};
template <>
struct safeshard::tensor_factory<names_device_only> {
    static names_device_only allocate(const tensor_request&) { return {}; }
    static std::byte* data(names_device_only& t) { return t.p; }
    static std::size_t size_bytes(const names_device_only&) { return 0; }
    static constexpr device default_device() { return {device_kind::cuda, 0}; }
};
template <>
struct safeshard::tensor_factory<host_only> {
    static host_only allocate(const tensor_request&) { return {}; }
    static std::byte* data(host_only& t) { return t.p; }
    static std::size_t size_bytes(const host_only&) { return 0; }
};

namespace {
using namespace safeshard;
static_assert(loadable_tensor<on_device> && device_tensor<on_device>);
// Half of a device factory is not one (check_device_factory names the missing half).
static_assert(loadable_tensor<names_device_only> && !device_tensor<names_device_only>);
static_assert(tensor_factory_names_device<names_device_only> &&
              !tensor_factory_makes_engine<names_device_only>);
static_assert(loadable_tensor<host_only> && !device_tensor<host_only>);
static_assert(!device_tensor<host_tensor>);
}  // namespace
