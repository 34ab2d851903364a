// The facade: a checkpoint, a rank and a world size in; the rank's tensors by name and a
// load_report out. The pieces (load_plan, an engine, tensor_factory) stay usable on their own:
// load_tensors() runs a plan someone built with an engine someone chose.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "safeshard/core/clock.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/engine.hpp"
#include "safeshard/load/file_cache.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/load/report.hpp"
#include "safeshard/load/tensor_factory.hpp"
#include "safeshard/shard/init.hpp"

namespace safeshard {

// A rank's tensors by name; tied names alias one tensor.
template <class T>
class loaded_model {
public:
    [[nodiscard]] T& at(std::string_view name) { return tensors_[index_of(name)]; }
    [[nodiscard]] const T& at(std::string_view name) const { return tensors_[index_of(name)]; }
    [[nodiscard]] bool contains(std::string_view name) const {
        return index_.find(std::string(name)) != index_.end();
    }
    // Parameter names, in the plan's order (aliases included).
    [[nodiscard]] std::span<const std::string> names() const noexcept { return names_; }
    // The distinct tensors (an alias is not a second tensor).
    [[nodiscard]] std::span<T> tensors() noexcept { return tensors_; }
    [[nodiscard]] std::span<const T> tensors() const noexcept { return tensors_; }
    [[nodiscard]] std::size_t size() const noexcept { return names_.size(); }
    // A mixture of experts: the experts of each layer with experts (0: a dense model), and
    // those this rank holds, ascending (their tensors are the only experts' it has).
    [[nodiscard]] std::uint64_t experts() const noexcept { return experts_; }
    [[nodiscard]] std::span<const std::uint64_t> held_experts() const noexcept {
        return held_experts_;
    }

    load_report report{};

private:
    template <class U, class E>
    friend loaded_model<U> load_tensors(const load_plan&, E&, load_report*,
                                        const progress_callback&);

    [[nodiscard]] std::size_t index_of(std::string_view name) const {
        const auto it = index_.find(std::string(name));
        if (it == index_.end())
            throw error(errc::tensor_not_found,
                        "the loaded model has no tensor '" + std::string(name) + "'",
                        error_context{.file = {}, .tensor = std::string(name)});
        return it->second;
    }

    std::vector<T> tensors_{};
    std::vector<std::string> names_{};
    std::uint64_t experts_ = 0;
    std::vector<std::uint64_t> held_experts_{};
    std::unordered_map<std::string, std::size_t, detail::name_hash> index_{};
};

struct load_options {
    std::uint32_t rank = 0;
    std::uint32_t world = 1;
    expert_parallel experts{};  // a mixture of experts: expert groups and placement
    plan_options plan{};
    host_engine_options engine{};
    checkpoint_options checkpoint{};
    progress_callback progress{};
};

namespace detail {

template <class T>
T allocate_one(const plan_destination& d) {
    const tensor_request req{d.name, d.dtype, d.local, d.device, d.bytes};
    const error_context ctx{.file = {}, .tensor = d.name};
    T t = [&]() -> T {
        try {
            return tensor_factory<T>::allocate(req);
        } catch (const std::exception& e) {
            throw error(errc::tensor_factory_failed,
                        "the tensor factory failed for '" + d.name + "' (" +
                            std::string(name(d.dtype)) + " " + d.local.to_string() + ", " +
                            std::to_string(d.bytes) + " bytes): " + e.what(),
                        ctx);
        }
    }();
    const std::size_t got = tensor_factory<T>::size_bytes(std::as_const(t));
    if (got != d.bytes)
        throw error(errc::tensor_factory_failed,
                    "the tensor factory returned " + std::to_string(got) + " bytes for '" + d.name +
                        "', which needs " + std::to_string(d.bytes) + " (" +
                        std::string(name(d.dtype)) + " " + d.local.to_string() + ")",
                    ctx);
    if (d.bytes != 0 && tensor_factory<T>::data(t) == nullptr)
        throw error(errc::tensor_factory_failed,
                    "the tensor factory returned no memory for '" + d.name + "'", ctx);
    return t;
}

// One engine fills one device: a destination planned for another is refused before anything
// is allocated.
inline void check_engine_device(const plan_destination& d, const device& engine_device) {
    if (d.device == engine_device) return;
    std::string what = engine_device.kind == device_kind::host
                           ? "the host engine fills host memory only"
                           : "the engine fills " + to_string(engine_device) +
                                 " (one engine per device: make one for " + to_string(d.device) +
                                 ", or plan for " + to_string(engine_device) + ")";
    throw error(
        errc::invalid_argument,
        "parameter '" + d.name + "' is planned for " +
            (d.device.kind == device_kind::host ? std::string("host memory")
                                                : "a " + std::string(to_string(d.device.kind)) +
                                                      " device (" + to_string(d.device) + ")") +
            "; " + what,
        error_context{.file = {}, .tensor = d.name});
}

// A created parameter: its init values in f32, converted to the tensor's dtype.
inline void initialise(const plan_destination& d, std::byte* out) {
    const auto elems = static_cast<std::size_t>(*d.local.element_count());
    std::vector<float> values(elems);
    fill<float>(d.init, d.init_map, values);
    const converter c =
        d.dtype == dtype::f32 ? converter(dtype::f32) : find_converter(dtype::f32, d.dtype);
    c(reinterpret_cast<const std::byte*>(values.data()), out, elems);
}
}  // namespace detail

// The files of a checkpoint, each expected to be the file whose header it read.
[[nodiscard]] inline std::vector<cached_file> cached_files(const checkpoint& c) {
    std::vector<cached_file> out;
    out.reserve(c.files().size());
    for (const auto& f : c.files()) out.push_back(cached_file{f.path, f.view.version()});
    return out;
}
// The files of a plan, by the ops' file index.
[[nodiscard]] inline std::vector<cached_file> cached_files(const load_plan& p) {
    std::vector<cached_file> out;
    out.reserve(p.files().size());
    for (std::size_t i = 0; i < p.files().size(); ++i)
        out.push_back(cached_file{p.files()[i], p.versions()[i]});
    return out;
}

namespace detail {
// The companions of a plan's dequantized weights: held in host memory for the load, read
// before the weights (with a host engine, whatever engine fills the rank's tensors), and the
// weights' dequantizing converters reading them.
class consumed_companions {
public:
    std::byte* hold(std::uint64_t bytes) {
        held_.emplace_back(static_cast<std::size_t>(bytes));
        return held_.back().data();
    }

    // Reads the consumed companions' ops and makes the dequantized weights' converters;
    // returns what it read (nothing for a plan without them).
    engine_stats read(const load_plan& plan, std::span<std::byte* const> addresses,
                      std::span<const std::uint64_t> sizes, std::span<const std::string> names) {
        const auto dests = plan.destinations();
        std::vector<copy_op> first;
        for (const copy_op& op : plan.ops())
            if (dests[op.destination].consumed)
                first.push_back(op);
            else
                after_.push_back(op);
        if (first.empty()) return {};
        host_engine e;
        e.set_names(names);
        file_cache files(cached_files(plan));
        run_windows(e, files, first, addresses, sizes);
        files.finish();
        converters_.assign(dests.size(), converter(dtype::u8));
        views_.reserve(static_cast<std::size_t>(std::count_if(
            dests.begin(), dests.end(), [](const plan_destination& d) { return d.dequant; })));
        for (std::size_t i = 0; i < dests.size(); ++i) {
            if (!dests[i].dequant || dests[i].tied()) continue;
            const dequant_view& v =
                views_.emplace_back(dequant_view_of(dests, dests[i], addresses));
            check_group_index(dests[i], dests[*dests[i].dequant->scales], v);
            converters_[i] =
                find_dequantizer(dequant_conversion_inputs(dests, dests[i]), dests[i].dtype, &v);
        }
        return e.stats();
    }

    // The plan's other ops (all of them where nothing is consumed).
    [[nodiscard]] std::span<const copy_op> ops_after(const load_plan& plan) const noexcept {
        return converters_.empty() ? plan.ops() : std::span<const copy_op>(after_);
    }
    [[nodiscard]] std::span<const converter> converters() const noexcept { return converters_; }

private:
    std::vector<std::vector<std::byte>> held_{};
    std::vector<copy_op> after_{};
    // The dequantized destinations' views (reserved whole: converters_ point at them).
    std::vector<dequant_view> views_{};
    std::vector<converter> converters_{};
};

}  // namespace detail

// Runs a plan: allocates the destinations with tensor_factory<T>, reads with `engine`,
// initialises created parameters. The files are opened (and mapped) a window at a time, as
// many as the process's limits allow (file_cache). With `progress`, the engine reports
// progress over the whole plan through it.
template <class T, class Engine>
[[nodiscard]] loaded_model<T> load_tensors(const load_plan& plan, Engine& engine,
                                           load_report* report = nullptr,
                                           const progress_callback& progress = {}) {
    static_assert(check_tensor_factory<T>());
    static_assert(check_copy_engine<Engine>());
    loaded_model<T> out;
    load_report& r = report ? *report : out.report;
    plan.fill_report(r);
    out.experts_ = plan.experts();
    out.held_experts_.assign(plan.held_experts().begin(), plan.held_experts().end());

    auto t0 = std::chrono::steady_clock::now();
    const auto dests = plan.destinations();
    out.tensors_.reserve(dests.size());
    std::vector<std::size_t> slot(dests.size());
    std::vector<std::byte*> addresses(dests.size(), nullptr);
    std::vector<std::uint64_t> sizes(dests.size(), 0);
    detail::consumed_companions consumed;
    for (std::size_t i = 0; i < dests.size(); ++i) {
        const plan_destination& d = dests[i];
        if (d.tied()) continue;
        sizes[i] = d.bytes;
        if (d.consumed) {  // read for a conversion only: host memory of the loader's
            addresses[i] = consumed.hold(d.bytes);
            continue;
        }
        detail::check_engine_device(d, engine.target_device());
        out.tensors_.push_back(detail::allocate_one<T>(d));
        slot[i] = out.tensors_.size() - 1;
        addresses[i] = tensor_factory<T>::data(out.tensors_.back());
    }
    for (std::size_t i = 0; i < dests.size(); ++i) {
        if (dests[i].consumed) continue;
        const std::size_t s = dests[i].tied() ? slot[*dests[i].tied_to] : slot[i];
        out.names_.push_back(dests[i].name);
        out.index_.emplace(dests[i].name, s);
    }
    r.allocate_seconds = seconds_since(t0);

    t0 = std::chrono::steady_clock::now();
    std::vector<std::string> names(dests.size());
    for (std::size_t i = 0; i < dests.size(); ++i) names[i] = dests[i].name;
    // The companions a dequantization consumes first, then the rank's tensors through them.
    const engine_stats read_first = consumed.read(plan, addresses, sizes, names);
    file_cache_options fo{};
    fo.read = engine.reader_options();  // O_DIRECT files for host_engine's direct mode
    // Each file must be the one the plan was made from, not a newer one.
    file_cache files(cached_files(plan), fo);
    const engine_stats before = engine.stats();
    engine.set_names(names);  // error messages name the tensor
    run_windows(engine, files, consumed.ops_after(plan), addresses, sizes, progress,
                consumed.converters());
    files.finish();  // no bytes of two versions of a file
    const engine_stats after = engine.stats();
    r.bytes_read = after.bytes_read - before.bytes_read + read_first.bytes_read;
    r.bytes_written = after.bytes_written - before.bytes_written;
    for (auto& n : engine.take_notes()) r.notes.push_back(std::move(n));  // its fallbacks
    r.copy_seconds = seconds_since(t0);

    t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < dests.size(); ++i)
        if (dests[i].created()) {
            // Device memory: initialised on the host, then uploaded.
            if constexpr (device_copy_engine<Engine>) {
                std::vector<std::byte> host(dests[i].bytes);
                detail::initialise(dests[i], host.data());
                engine.upload(addresses[i], host);
            } else {
                detail::initialise(dests[i], addresses[i]);
            }
            r.bytes_written += dests[i].bytes;
        }
    r.init_seconds = seconds_since(t0);
    if (report) out.report = r;
    return out;
}

namespace detail {
// A device_tensor's factory names the device load<T>() plans for when the options name the
// host, and makes the engine that fills a device (e.g. cuda_tensor's cuda_engine); other
// tensors are planned for o.plan.device and copied with a host_engine.
template <class T>
plan_options plan_options_for(const load_options& o) {
    static_assert(check_device_factory<T>());
    plan_options p = o.plan;
    if constexpr (device_tensor<T>)
        if (p.device.kind == device_kind::host) p.device = tensor_factory<T>::default_device();
    return p;
}

// With an engine of the caller's: the options' device, or the engine's where they name the
// host (one engine per device: the engine says which).
template <class Engine>
plan_options plan_options_for(const load_options& o, const Engine& engine) {
    plan_options p = o.plan;
    if (p.device.kind == device_kind::host) p.device = engine.target_device();
    return p;
}

template <class T, class Engine>
loaded_model<T> run_plan(const load_plan& plan, Engine& engine, const load_options& o,
                         double plan_s) {
    load_report r;
    loaded_model<T> m = load_tensors<T>(plan, engine, &r, o.progress);
    m.report.plan_seconds = plan_s;
    return m;
}

template <class T>
loaded_model<T> run_plan(const load_plan& plan, const load_options& o, const device& d,
                         double plan_s) {
    if constexpr (device_tensor<T>) {
        auto engine = tensor_factory<T>::make_engine(d);
        return run_plan<T>(plan, engine, o, plan_s);
    } else {
        host_engine engine(o.engine);
        return run_plan<T>(plan, engine, o, plan_s);
    }
}
}  // namespace detail

// The common case: the architecture found by config.json's model_type.
template <class T = host_tensor>
[[nodiscard]] loaded_model<T> load(std::string_view path_or_repo, const load_options& o = {}) {
    const auto t0 = std::chrono::steady_clock::now();
    const checkpoint ckpt = checkpoint::open(path_or_repo, o.checkpoint);
    const plan_options po = detail::plan_options_for<T>(o);
    const load_plan plan = load_plan::build(ckpt, {o.rank, o.world, o.experts}, po);
    return detail::run_plan<T>(plan, o, po.device, seconds_since(t0));
}

// With the user's own schema.
template <class T = host_tensor>
[[nodiscard]] loaded_model<T> load(std::string_view path_or_repo, const schema& s,
                                   const load_options& o = {}) {
    const auto t0 = std::chrono::steady_clock::now();
    const checkpoint ckpt = checkpoint::open(path_or_repo, o.checkpoint);
    const plan_options po = detail::plan_options_for<T>(o);
    const load_plan plan = load_plan::build(ckpt, s, {o.rank, o.world, o.experts}, po);
    return detail::run_plan<T>(plan, o, po.device, seconds_since(t0));
}

// With an engine of the caller's (a cuda_engine with its own options, one per device). The
// plan is for the engine's device unless the options name a device, which must be the same.
template <class T = host_tensor, class Engine>
requires copy_engine<Engine>
[[nodiscard]] loaded_model<T> load(std::string_view path_or_repo, const load_options& o,
                                   Engine& engine) {
    const auto t0 = std::chrono::steady_clock::now();
    const checkpoint ckpt = checkpoint::open(path_or_repo, o.checkpoint);
    static_assert(check_device_factory<T>());
    const load_plan plan =
        load_plan::build(ckpt, {o.rank, o.world, o.experts}, detail::plan_options_for(o, engine));
    return detail::run_plan<T>(plan, engine, o, seconds_since(t0));
}

}  // namespace safeshard
