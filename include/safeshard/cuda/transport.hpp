// What the CUDA engine asks of the CUDA runtime, as a concept: pinned and device memory,
// streams, events, host-to-device copies (1-D and 2-D), 2-D memsets, host registration.
// cudart_transport.hpp implements it on the CUDA runtime API; the tests implement it on host
// memory and record every call, so that the engine's scheduling is tested without a GPU.
//
// Every call returns a status code: 0 is success, `not_ready` (event_query only) says the
// event has not completed, anything else is an error that error_name() names.
#pragma once

#include <concepts>
#include <cstddef>
#include <string>

namespace safeshard {

// Opaque handles (cudaStream_t and cudaEvent_t are pointers).
using transport_stream = void*;
using transport_event = void*;

template <class T>
concept cuda_transport = requires(T& t, void* p, const void* cp, void** pp, std::size_t n,
                                  transport_stream s, transport_stream* ps, transport_event e,
                                  transport_event* pe, int code) {
    { T::success } -> std::convertible_to<int>;
    { T::not_ready } -> std::convertible_to<int>;
    { t.error_name(code) } -> std::convertible_to<std::string>;
    { t.set_device(code) } -> std::same_as<int>;
    { t.host_alloc(pp, n) } -> std::same_as<int>;  // pinned, page aligned
    { t.host_free(p) } -> std::same_as<int>;
    { t.device_alloc(pp, n) } -> std::same_as<int>;  // on the current device
    { t.device_free(p) } -> std::same_as<int>;
    { t.stream_create(ps) } -> std::same_as<int>;
    { t.stream_destroy(s) } -> std::same_as<int>;
    { t.stream_synchronize(s) } -> std::same_as<int>;
    { t.event_create(pe) } -> std::same_as<int>;  // no timing
    { t.event_destroy(e) } -> std::same_as<int>;
    { t.event_record(e, s) } -> std::same_as<int>;
    { t.event_query(e) } -> std::same_as<int>;  // success, not_ready or an error
    { t.event_synchronize(e) } -> std::same_as<int>;
    // dst (device) <- src (host), n bytes, enqueued on s.
    { t.memcpy_async(p, cp, n, s) } -> std::same_as<int>;
    // height rows of width bytes: src rows `spitch` apart, dst rows `dpitch` apart.
    { t.memcpy_2d_async(p, n, cp, n, n, n, s) } -> std::same_as<int>;
    // The same from pageable memory, returning when the source may be reused (the copy
    // itself may still be in flight on the legacy default stream: device_synchronize).
    { t.memcpy_2d(p, n, cp, n, n, n) } -> std::same_as<int>;
    { t.device_synchronize() } -> std::same_as<int>;
    // height rows of width zero bytes, dpitch apart, enqueued on s.
    { t.memset_2d_async(p, n, n, n, s) } -> std::same_as<int>;
    // Page-locks [p, p + n) read-only for DMA, and undoes it.
    { t.host_register_read_only(p, n) } -> std::same_as<int>;
    { t.host_unregister(p) } -> std::same_as<int>;
};

}  // namespace safeshard
