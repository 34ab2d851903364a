// libFuzzer target: the export metadata of a per-rank export as merge reads it (versions 1 and
// 2): each rank folder's shard documents against the tensors its headers store
// (read_export_metadata), then the ranks against each other and every cut (plan_merge). Any
// input is either accepted or refused with safeshard::error(invalid_export); an accepted export
// must hold what merge relies on: every rank's cut of every tensor gives its stored shape,
// copies only inside the rank's tensor and the merged source, and covers the source, which a
// merge of generated rank bytes then fills back exactly.
//
// Input: shard files separated by a line "--". A shard file is three parts, a line each but the
// last: the number N of its rank folder (rank-0000N), the tensors its header stores as a JSON
// object {"name": ["DTYPE", [extents...]], ...}, and the rest, its "safeshard" document (none
// when the file ends after the second line). tests/fuzz/corpus/export_metadata_fuzz/ holds
// real exports, versions 1 and 2, written this way.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <simdjson.h>

#include "safeshard/format/export_metadata_reader.hpp"
#include "safeshard/save/merge_plan.hpp"
#include "safeshard/save/shard_plan.hpp"

namespace {

using namespace safeshard;

constexpr std::size_t max_files = 64;
constexpr std::uint32_t max_rank_folders = 16;
constexpr std::uint64_t max_merged_bytes = 1 << 20;  // generated data, to keep runs fast

struct shard_input {
    std::uint32_t folder = 0;
    std::vector<std::string> names;  // owned: export_stored_tensor borrows them
    std::vector<export_stored_tensor> stored;
    std::optional<std::string> document;
};

[[nodiscard]] std::optional<std::uint32_t> folder_number(std::string_view line) {
    if (line.empty() || line.size() > 2) return std::nullopt;
    std::uint32_t n = 0;
    for (const char c : line) {
        if (c < '0' || c > '9') return std::nullopt;
        n = n * 10 + static_cast<std::uint32_t>(c - '0');
    }
    return n < max_rank_folders ? std::optional(n) : std::nullopt;
}

// The stored tensors line; nullopt when it is not the expected JSON (the input is skipped).
[[nodiscard]] bool parse_stored(std::string_view json, shard_input& out) {
    simdjson::dom::parser parser;
    const simdjson::padded_string text(json);
    simdjson::dom::object o;
    if (parser.parse(text).get(o) != simdjson::SUCCESS) return false;
    std::vector<std::pair<dtype, shape>> kinds;
    for (const auto field : o) {
        simdjson::dom::array a;
        if (field.value.get_array().get(a) != simdjson::SUCCESS || a.size() != 2) return false;
        std::string_view dt;
        simdjson::dom::array dims;
        if (a.at(0).get_string().get(dt) != simdjson::SUCCESS ||
            a.at(1).get_array().get(dims) != simdjson::SUCCESS)
            return false;
        const auto t = parse_dtype(dt);
        if (!t) return false;
        shape s;
        for (const simdjson::dom::element e : dims) {
            std::uint64_t v = 0;
            if (e.get_uint64().get(v) != simdjson::SUCCESS || !s.try_push_back(v)) return false;
        }
        out.names.emplace_back(field.key);
        kinds.emplace_back(*t, s);
    }
    // A header holds each name once.
    std::vector<std::string> sorted = out.names;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) return false;
    for (std::size_t i = 0; i < out.names.size(); ++i)
        out.stored.push_back(export_stored_tensor{out.names[i], kinds[i].first, kinds[i].second});
    return true;
}

[[nodiscard]] std::vector<shard_input> parse_input(std::string_view in, bool& ok) {
    std::vector<shard_input> files;
    ok = true;
    while (ok && !in.empty() && files.size() < max_files) {
        const auto sep = in.find("\n--\n");
        std::string_view chunk = in.substr(0, sep);
        in = sep == std::string_view::npos ? std::string_view{} : in.substr(sep + 4);
        shard_input f;
        const auto l1 = chunk.find('\n');
        const auto n = folder_number(chunk.substr(0, l1));
        if (!n || l1 == std::string_view::npos) {
            ok = false;
            break;
        }
        f.folder = *n;
        chunk = chunk.substr(l1 + 1);
        const auto l2 = chunk.find('\n');
        ok = parse_stored(chunk.substr(0, l2), f);
        if (l2 != std::string_view::npos) f.document = std::string(chunk.substr(l2 + 1));
        files.push_back(std::move(f));
    }
    return files;
}

void expect_invalid_export(const error& e) {
    if (e.code() != errc::invalid_export) std::abort();
}

// Cuts generated source bytes into each rank's tensor by its slice map and merges them back
// the way merge does: every copy stays inside the rank's tensor and the merged source, no two
// bytes of a source land on one byte of a rank's tensor (an export that merge could not undo),
// and every byte comes back.
void merge_generated(const merge_plan& plan, std::span<const merge_rank_metadata> ranks) {
    const export_metadata& m0 = *ranks.front().meta;
    std::uint64_t total = 0;
    for (const auto& info : plan.infos) {
        const auto n = info.shape.element_count();
        if (!n || *n > max_merged_bytes) return;
        total += tensor_byte_size(info);
    }
    if (total > max_merged_bytes) return;
    for (std::size_t i = 0; i < plan.outputs.size(); ++i) {
        const merge_output& out = plan.outputs[i];
        const export_tensor& t = ranks[out.rank].meta->tensors[out.tensor];
        const std::uint64_t bits = bit_size(t.dtype);
        const std::uint64_t bytes = tensor_byte_size(plan.infos[i]);
        auto source_byte = [&](std::uint64_t at) {
            return static_cast<std::uint8_t>(at * 131 + out.tensor * 7 + out.source * 17 +
                                             out.expert * 29 + 1);
        };
        std::vector<std::uint8_t> merged(bytes, 0), filled(bytes, 0);
        for (std::uint32_t r = 0; r < plan.world; ++r) {
            if (!holds_tensor(m0, t, r)) continue;  // another expert group's
            const merge_cut cut = merge_cut_of(
                m0, t, r, out.weight ? &ranks[out.rank].meta->tensors[*out.weight] : nullptr);
            const slice_result& sl = cut.slab;
            if (!cut.ok()) std::abort();  // plan_merge checked every rank's cut
            const auto local_elements = cut.local.element_count();
            if (!local_elements || *local_elements > max_merged_bytes) return;
            const std::uint64_t local_bytes = (*local_elements * bits + 7) / 8;
            std::vector<std::uint8_t> local(local_bytes, 0), written(local_bytes, 0);
            // Each piece of the rank's tensor (an expert's slab of stacked experts, shifted; of
            // gathered experts, the output's expert's only).
            auto each_byte = [&](auto&& f) {
                cut.for_each_piece([&](const std::uint64_t* source_at, std::uint64_t local_at,
                                       std::uint64_t expert) {
                    if (t.gathered_experts && expert != out.expert) return;
                    for (std::size_t b = 0; b < sl.map.size(); ++b) {
                        const copy_box& box = sl.map[b];
                        if (box.source != out.source) continue;
                        for (std::uint64_t row = 0; row < box.rows; ++row) {
                            const std::uint64_t at = (source_at[box.source] + box.src_offset +
                                                      row * box.src_row_stride) *
                                                     bits / 8;
                            const std::uint64_t from =
                                (local_at + box.dst_offset + row * box.dst_row_stride) * bits / 8;
                            const std::uint64_t n = (box.row_elems * bits + 7) / 8;
                            if (at + n > bytes || from + n > local_bytes) std::abort();
                            for (std::uint64_t k = 0; k < n; ++k) f(at + k, from + k);
                        }
                    }
                });
            };
            each_byte([&](std::uint64_t at, std::uint64_t from) {  // the export's cut
                if (written[from] && local[from] != source_byte(at)) std::abort();
                local[from] = source_byte(at);
                written[from] = 1;
            });
            each_byte([&](std::uint64_t at, std::uint64_t from) {  // the merge
                if (filled[at] && merged[at] != local[from]) std::abort();
                merged[at] = local[from];
                filled[at] = 1;
            });
        }
        // Every byte comes back: a cut that gives each rank its stored shape covers the
        // tensor (which is also what bounds merge's buffer by the bytes the ranks store).
        for (std::uint64_t k = 0; k < bytes; ++k)
            if (!filled[k] || merged[k] != source_byte(k)) std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    bool ok = false;
    const std::vector<shard_input> files =
        parse_input(std::string_view(reinterpret_cast<const char*>(data), size), ok);
    if (!ok || files.empty()) return 0;

    // Each rank folder's files, read as the loader and merge read them.
    std::map<std::uint32_t, std::vector<export_shard_file>> folders;
    for (std::size_t i = 0; i < files.size(); ++i)
        folders[files[i].folder].push_back(export_shard_file{
            "rank-" + std::to_string(files[i].folder) + "/shard-" + std::to_string(i),
            files[i].document ? std::optional<std::string_view>(*files[i].document) : std::nullopt,
            files[i].stored});
    std::vector<export_metadata> metas;
    std::vector<merge_rank_metadata> ranks;
    metas.reserve(folders.size());
    for (const auto& [n, shard_files] : folders) {
        try {
            auto m = read_export_metadata(shard_files);
            if (!m) return 0;  // not an export: merge refuses it before reading metadata
            // What the reader accepted describes every stored tensor, with its stored shape.
            std::size_t stored = 0, untied = 0;
            for (const auto& f : shard_files) stored += f.stored.size();
            for (const auto& t : m->tensors) untied += t.tied() ? 0 : 1;
            if (stored != untied) std::abort();
            metas.push_back(std::move(*m));
        } catch (const error& e) {
            expect_invalid_export(e);
            return 0;
        }
        ranks.push_back(merge_rank_metadata{n, "ex/" + export_rank_folder(n), &metas.back()});
    }
    try {
        merge_generated(plan_merge(ranks), ranks);
    } catch (const error& e) {
        expect_invalid_export(e);
    }
    return 0;
}
