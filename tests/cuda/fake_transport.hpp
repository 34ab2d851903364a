// A transport for the CUDA engine on host memory: "device" memory is host memory it handed
// out, streams are queues of copies that run only when something waits for them (an event or
// a stream synchronisation), so an engine that overwrote a staging buffer before its copy ran
// is caught: every async copy hashes its source when enqueued and again when it runs.
// It records each call, checks every address against what it allocated, and fails the
// call numbered `fail_at` (1-based) on request.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "safeshard/cuda/transport.hpp"

namespace safeshard::test {

class fake_device {
public:
    static constexpr int injected = 999;

    long fail_at = -1;  // the call that fails (1-based), -1: none
    // Called by cudaHostRegister with its range; true fails the call.
    std::function<bool(const void*, std::size_t)> on_register{};
    std::string failed_call{};  // its CUDA name, once failed
    long calls = 0;             // every call so far
    int expected_device = 0;    // the device every thread must have set

    std::vector<std::string> violations{};
    std::map<std::string, long> counts{};  // calls by CUDA name
    std::uint64_t async_bytes = 0, sync_bytes = 0, memset_bytes = 0;
    std::size_t max_pending = 0;  // most copies queued at once

    ~fake_device() {
        for (auto& [p, n] : pinned_) std::free(p);
        for (auto& [p, n] : device_) std::free(p);
    }

    // ---- what the tests look at ----
    [[nodiscard]] std::size_t live_pinned() const {
        return locked([&] { return pinned_.size(); });
    }
    [[nodiscard]] std::size_t live_device() const {
        return locked([&] { return device_.size(); });
    }
    [[nodiscard]] std::size_t live_streams() const {
        return locked([&] { return streams_.size(); });
    }
    [[nodiscard]] std::size_t live_events() const {
        return locked([&] { return events_.size(); });
    }
    [[nodiscard]] std::size_t live_registrations() const {
        return locked([&] { return registered_.size(); });
    }
    [[nodiscard]] std::size_t pending() const {
        return locked([&] {
            std::size_t n = 0;
            for (auto& [s, q] : queues_) n += q.size();
            return n;
        });
    }
    [[nodiscard]] long count(const std::string& name) const {
        return locked([&] {
            const auto it = counts.find(name);
            return it == counts.end() ? 0L : it->second;
        });
    }
    // Nothing left allocated, queued or registered (device memory is the tests' own).
    [[nodiscard]] bool clean() const {
        return live_pinned() == 0 && live_streams() == 0 && live_events() == 0 &&
               live_registrations() == 0 && pending() == 0;
    }

    // ---- the transport's calls (fake_transport forwards here) ----

    int set_device(int d) {
        std::lock_guard l(m_);
        if (enter("cudaSetDevice")) return injected;
        current_device() = d;
        return 0;
    }
    int host_alloc(void** p, std::size_t n) {
        std::lock_guard l(m_);
        if (enter("cudaHostAlloc")) return injected;
        *p = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096);
        pinned_[static_cast<std::byte*>(*p)] = n;
        return 0;
    }
    int host_free(void* p) {
        std::lock_guard l(m_);
        const bool fail = enter("cudaFreeHost");
        auto* b = static_cast<std::byte*>(p);
        for (auto& [s, q] : queues_)
            for (auto& op : q)
                if (op.src >= b && op.src < b + pinned_[b])
                    violation("cudaFreeHost of a staging buffer a queued copy reads");
        if (pinned_.erase(b) == 0) violation("cudaFreeHost of memory not from cudaHostAlloc");
        std::free(p);
        return fail ? injected : 0;  // freed either way: a failed free leaks nothing here
    }
    int device_alloc(void** p, std::size_t n) {
        std::lock_guard l(m_);
        if (enter("cudaMalloc")) return injected;
        *p = std::aligned_alloc(256, std::max<std::size_t>(256, (n + 255) / 256 * 256));
        device_[static_cast<std::byte*>(*p)] = n;
        return 0;
    }
    int device_free(void* p) {
        std::lock_guard l(m_);
        const bool fail = enter("cudaFree");
        auto* b = static_cast<std::byte*>(p);
        for (auto& [s, q] : queues_)
            for (auto& op : q)
                if (op.dst >= b && op.dst < b + device_[b])
                    violation("cudaFree of device memory a queued copy writes");
        if (device_.erase(b) == 0) violation("cudaFree of memory not from cudaMalloc");
        std::free(p);
        return fail ? injected : 0;
    }
    int stream_create(transport_stream* s) {
        std::lock_guard l(m_);
        if (enter("cudaStreamCreate")) return injected;
        *s = handle(next_++);
        streams_.insert(*s);
        return 0;
    }
    int stream_destroy(transport_stream s) {
        std::lock_guard l(m_);
        const bool fail = enter("cudaStreamDestroy");
        if (!queues_[s].empty()) violation("cudaStreamDestroy with copies queued");
        run_queue(s, queues_[s].size());
        if (streams_.erase(s) == 0) violation("cudaStreamDestroy of an unknown stream");
        return fail ? injected : 0;
    }
    int stream_synchronize(transport_stream s) {
        std::lock_guard l(m_);
        if (enter("cudaStreamSynchronize")) return injected;
        check_stream(s);
        run_queue(s, queues_[s].size());
        return 0;
    }
    int event_create(transport_event* e) {
        std::lock_guard l(m_);
        if (enter("cudaEventCreate")) return injected;
        *e = handle(next_++);
        events_[*e] = {};
        return 0;
    }
    int event_destroy(transport_event e) {
        std::lock_guard l(m_);
        const bool fail = enter("cudaEventDestroy");
        if (events_.erase(e) == 0) violation("cudaEventDestroy of an unknown event");
        return fail ? injected : 0;
    }
    int event_record(transport_event e, transport_stream s) {
        std::lock_guard l(m_);
        if (enter("cudaEventRecord")) return injected;
        check_stream(s);
        if (!events_.count(e)) violation("cudaEventRecord of an unknown event");
        events_[e] = {s, ++seq_};
        queues_[s].push_back(queued{.marker = seq_});
        return 0;
    }
    int event_query(transport_event e) {
        std::lock_guard l(m_);
        if (enter("cudaEventQuery")) return injected;
        return reached(e) ? 0 : 600;  // cudaErrorNotReady
    }
    int event_synchronize(transport_event e) {
        std::lock_guard l(m_);
        if (enter("cudaEventSynchronize")) return injected;
        const auto it = events_.find(e);
        if (it == events_.end()) {
            violation("cudaEventSynchronize of an unknown event");
            return 0;
        }
        if (it->second.stream == nullptr) return 0;  // never recorded: complete
        auto& q = queues_[it->second.stream];
        std::size_t n = 0;
        while (n < q.size() && !(q[n].marker == it->second.seq)) ++n;
        if (n < q.size()) run_queue(it->second.stream, n + 1);
        return 0;
    }
    int memcpy_async(void* dst, const void* src, std::size_t n, transport_stream s) {
        std::lock_guard l(m_);
        if (enter("cudaMemcpyAsync")) return injected;
        enqueue(s, dst, n, src, n, n, 1, false);
        return 0;
    }
    int memcpy_2d_async(void* dst, std::size_t dp, const void* src, std::size_t sp, std::size_t w,
                        std::size_t h, transport_stream s) {
        std::lock_guard l(m_);
        if (enter("cudaMemcpy2DAsync")) return injected;
        enqueue(s, dst, dp, src, sp, w, h, false);
        return 0;
    }
    int memcpy_2d(void* dst, std::size_t dp, const void* src, std::size_t sp, std::size_t w,
                  std::size_t h) {
        std::lock_guard l(m_);
        if (enter("cudaMemcpy2D")) return injected;
        check_dst(dst, dp, w, h);
        if (sp < w || dp < w) violation("cudaMemcpy2D pitch below the width");
        // As the driver does from pageable memory: the source is staged at once, the copy
        // lands later (on the legacy stream, run by device_synchronize).
        queued q{static_cast<std::byte*>(dst), dp, nullptr, w, w, h, false};
        q.owned.resize(w * h);
        for (std::size_t r = 0; r < h; ++r)
            std::memcpy(q.owned.data() + r * w, static_cast<const std::byte*>(src) + r * sp, w);
        queues_[nullptr].push_back(std::move(q));
        sync_bytes += w * h;
        return 0;
    }
    int device_synchronize() {
        std::lock_guard l(m_);
        if (enter("cudaDeviceSynchronize")) return injected;
        for (auto& [s, q] : queues_) run_queue(s, q.size());
        return 0;
    }
    int memset_2d_async(void* dst, std::size_t dp, std::size_t w, std::size_t h,
                        transport_stream s) {
        std::lock_guard l(m_);
        if (enter("cudaMemset2DAsync")) return injected;
        enqueue(s, dst, dp, nullptr, 0, w, h, true);
        return 0;
    }
    int host_register_read_only(void* p, std::size_t n) {
        std::lock_guard l(m_);
        if (enter("cudaHostRegister")) return injected;
        if (on_register && on_register(p, n)) return injected;
        for (auto& [b, len] : registered_)
            if (b == p) violation("cudaHostRegister of a range registered already");
        registered_.emplace_back(static_cast<const std::byte*>(p), n);
        return 0;
    }
    int host_unregister(void* p) {
        std::lock_guard l(m_);
        const bool fail = enter("cudaHostUnregister");
        const auto it = std::find_if(registered_.begin(), registered_.end(),
                                     [&](const auto& r) { return r.first == p; });
        if (it == registered_.end()) {
            violation("cudaHostUnregister of an unregistered range");
        } else {
            for (auto& [s, q] : queues_)
                for (auto& op : q)
                    if (op.src >= it->first && op.src < it->first + it->second)
                        violation("cudaHostUnregister while a queued copy reads the range");
            registered_.erase(it);
        }
        return fail ? injected : 0;
    }

    // The tests' own device memory (destination tensors), not counted as calls.
    std::byte* alloc_for_test(std::size_t n) {
        std::lock_guard l(m_);
        auto* p = static_cast<std::byte*>(
            std::aligned_alloc(256, std::max<std::size_t>(256, (n + 255) / 256 * 256)));
        std::memset(p, 0xa5, n);  // not zero: a missed zero-fill shows
        device_[p] = n;
        return p;
    }
    void free_for_test(std::byte* p) {
        std::lock_guard l(m_);
        for (auto& [s, q] : queues_)
            for (auto& op : q)
                if (!op.marker && op.dst >= p && op.dst < p + device_[p])
                    violation("device memory freed while a queued copy writes it");
        device_.erase(p);
        std::free(p);
    }

    // Tests' own direct access (reading device memory back).
    void read(const std::byte* device_ptr, std::byte* out, std::size_t n) const {
        std::lock_guard l(m_);
        std::memcpy(out, device_ptr, n);
    }

private:
    struct queued {
        std::byte* dst = nullptr;
        std::size_t dp = 0;
        const std::byte* src = nullptr;
        std::size_t sp = 0, w = 0, h = 0;
        bool memset = false;
        std::uint64_t hash = 0;
        std::uint64_t marker = 0;        // an event record (no copy)
        std::vector<std::byte> owned{};  // a staged pageable source
    };
    struct event_state {
        transport_stream stream = nullptr;
        std::uint64_t seq = 0;
    };

    template <class F>
    std::invoke_result_t<F> locked(F f) const {
        std::lock_guard l(m_);
        return f();
    }

    static transport_stream handle(std::uintptr_t id) { return reinterpret_cast<void*>(id << 4); }
    static int& current_device() {
        thread_local int d = -1;
        return d;
    }

    // Counts the call; true when it is the one to fail.
    bool enter(const char* name) {
        ++calls;
        ++counts[name];
        if (std::string(name) != "cudaSetDevice" && std::string(name) != "cudaFreeHost" &&
            std::string(name) != "cudaFree" && current_device() != expected_device)
            violation(std::string(name) + " on a thread whose device is not set");
        if (calls == fail_at) {
            failed_call = name;
            return true;
        }
        return false;
    }
    void violation(std::string what) {
        if (violations.size() < 20) violations.push_back(std::move(what));
    }
    void check_stream(transport_stream s) {
        if (!streams_.count(s)) violation("an unknown stream");
    }
    static bool inside(const std::map<std::byte*, std::size_t>& m, const std::byte* p,
                       std::size_t n) {
        auto it = m.upper_bound(const_cast<std::byte*>(p));
        if (it == m.begin()) return false;
        --it;
        return p >= it->first && p + n <= it->first + it->second;
    }
    bool in_registered(const std::byte* p, std::size_t n) const {
        for (auto& [b, len] : registered_)
            if (p >= b && p + n <= b + len) return true;
        return false;
    }
    void check_dst(void* dst, std::size_t dp, std::size_t w, std::size_t h) {
        const auto* d = static_cast<const std::byte*>(dst);
        if (h > 0 && !inside(device_, d, (h - 1) * dp + w))
            violation("a copy writes outside device memory");
    }
    static std::uint64_t hash_rows(const std::byte* p, std::size_t sp, std::size_t w,
                                   std::size_t h) {
        std::uint64_t x = 1469598103934665603ull;
        for (std::size_t r = 0; r < h; ++r)
            for (std::size_t i = 0; i < w; ++i)
                x = (x ^ static_cast<std::uint64_t>(p[r * sp + i])) * 1099511628211ull;
        return x;
    }
    void enqueue(transport_stream s, void* dst, std::size_t dp, const void* src, std::size_t sp,
                 std::size_t w, std::size_t h, bool memset) {
        check_stream(s);
        check_dst(dst, dp, w, h);
        if ((h > 1 && dp < w) || (!memset && h > 1 && sp < w))
            violation("a 2-D copy with a pitch below its width");
        queued q{
            static_cast<std::byte*>(dst), dp, static_cast<const std::byte*>(src), sp, w, h, memset};
        if (!memset) {
            const std::size_t span = h ? (h - 1) * sp + w : 0;
            if (!inside(pinned_, q.src, span) && !in_registered(q.src, span))
                violation("an async copy from memory neither pinned nor registered");
            q.hash = hash_rows(q.src, sp, w, h);
        }
        queues_[s].push_back(q);
        std::size_t n = 0;
        for (auto& [st, qq] : queues_) n += qq.size();
        max_pending = std::max(max_pending, n);
    }
    bool reached(transport_event e) {
        const auto it = events_.find(e);
        if (it == events_.end() || it->second.stream == nullptr) return true;
        for (auto& q : queues_[it->second.stream])
            if (q.marker == it->second.seq) return false;
        return true;
    }
    // Runs the first n queued entries of s.
    void run_queue(transport_stream s, std::size_t n) {
        auto& q = queues_[s];
        for (std::size_t i = 0; i < n && !q.empty(); ++i) {
            const queued op = std::move(q.front());
            q.pop_front();
            if (op.marker) continue;
            if (op.memset) {
                for (std::size_t r = 0; r < op.h; ++r) std::memset(op.dst + r * op.dp, 0, op.w);
                memset_bytes += op.w * op.h;
                continue;
            }
            if (!op.owned.empty()) {
                for (std::size_t r = 0; r < op.h; ++r)
                    std::memcpy(op.dst + r * op.dp, op.owned.data() + r * op.w, op.w);
                continue;
            }
            if (hash_rows(op.src, op.sp, op.w, op.h) != op.hash)
                violation("a staging buffer was overwritten before its copy ran");
            for (std::size_t r = 0; r < op.h; ++r)
                std::memcpy(op.dst + r * op.dp, op.src + r * op.sp, op.w);
            async_bytes += op.w * op.h;
        }
    }

    mutable std::mutex m_;
    std::uintptr_t next_ = 1;
    std::uint64_t seq_ = 0;
    std::map<std::byte*, std::size_t> pinned_, device_;
    std::vector<std::pair<const std::byte*, std::size_t>> registered_;
    std::set<transport_stream> streams_;
    std::map<transport_event, event_state> events_;
    std::map<transport_stream, std::deque<queued>> queues_;
};

// The transport the engine holds: a handle on a fake_device.
struct fake_transport {
    static constexpr int success = 0;
    static constexpr int not_ready = 600;
    fake_device* dev = nullptr;

    [[nodiscard]] std::string error_name(int code) const {
        return code == fake_device::injected ? "fakeErrorInjected"
                                             : "fakeError" + std::to_string(code);
    }
    int set_device(int d) { return dev->set_device(d); }
    int host_alloc(void** p, std::size_t n) { return dev->host_alloc(p, n); }
    int host_free(void* p) { return dev->host_free(p); }
    int device_alloc(void** p, std::size_t n) { return dev->device_alloc(p, n); }
    int device_free(void* p) { return dev->device_free(p); }
    int stream_create(transport_stream* s) { return dev->stream_create(s); }
    int stream_destroy(transport_stream s) { return dev->stream_destroy(s); }
    int stream_synchronize(transport_stream s) { return dev->stream_synchronize(s); }
    int event_create(transport_event* e) { return dev->event_create(e); }
    int event_destroy(transport_event e) { return dev->event_destroy(e); }
    int event_record(transport_event e, transport_stream s) { return dev->event_record(e, s); }
    int event_query(transport_event e) { return dev->event_query(e); }
    int event_synchronize(transport_event e) { return dev->event_synchronize(e); }
    int memcpy_async(void* d, const void* s, std::size_t n, transport_stream st) {
        return dev->memcpy_async(d, s, n, st);
    }
    int memcpy_2d_async(void* d, std::size_t dp, const void* s, std::size_t sp, std::size_t w,
                        std::size_t h, transport_stream st) {
        return dev->memcpy_2d_async(d, dp, s, sp, w, h, st);
    }
    int memcpy_2d(void* d, std::size_t dp, const void* s, std::size_t sp, std::size_t w,
                  std::size_t h) {
        return dev->memcpy_2d(d, dp, s, sp, w, h);
    }
    int device_synchronize() { return dev->device_synchronize(); }
    int memset_2d_async(void* d, std::size_t dp, std::size_t w, std::size_t h, transport_stream s) {
        return dev->memset_2d_async(d, dp, w, h, s);
    }
    int host_register_read_only(void* p, std::size_t n) {
        return dev->host_register_read_only(p, n);
    }
    int host_unregister(void* p) { return dev->host_unregister(p); }
};

static_assert(cuda_transport<fake_transport>);

}  // namespace safeshard::test
