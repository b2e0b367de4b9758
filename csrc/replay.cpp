// Replay kernels over the per-env circular streams of replay/core.py
// (slot = env * rows + row): the window gather behind sampling and the
// one-step add.
//
// gather_windows: window i starts at stream row start[i] of the env whose
// first slot is base[i / W] (W = len(start) / len(base) windows per item) and
// covers `length` rows, wrapping from row rows - 1 to row 0. Each window is at
// most two contiguous runs of the source, copied with memcpy into consecutive
// rows of `out`. Rows are opaque bytes, so one kernel serves every
// observation dtype. The GIL is released; large gathers are split over
// threads by window, and the result does not depend on the thread count.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include <unistd.h>

#include "pool.h"

namespace nb = nanobind;
using namespace nb::literals;

using Bytes2D = nb::ndarray<uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Index1D = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// Below this many bytes per thread, splitting costs more than it saves
// (batch 32 of Atari windows, 1.6 MB, gains from two threads).
static constexpr size_t kBytesPerThread = size_t(512) << 10;
// Idle workers yield this many times before sleeping, as the search forest's do.
static constexpr int kGatherSpin = 2000;

// One persistent pool for all gathers (rebuilt when the thread count changes),
// used by one gather at a time.
static std::mutex gather_mutex;
static std::unique_ptr<arbor::Pool> gather_pool;
static pid_t gather_pool_pid = 0;  // a forked child must not use its parent's (absent) workers

static void gather_windows(nb::ndarray<const uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> src,
                           Index1D base, Index1D start, int64_t length, int64_t rows, Bytes2D out,
                           int num_threads) {
    const int64_t total_rows = (int64_t)src.shape(0);
    const size_t row_bytes = src.shape(1);
    const int64_t items = (int64_t)base.shape(0);
    const int64_t n = (int64_t)start.shape(0);
    if (items < 1 || n % items != 0)
        throw nb::value_error(("gather_windows: start has " + std::to_string(n) + " entries, not a multiple of the " +
                               std::to_string(items) + " in base").c_str());
    const int64_t per_item = n / items;
    if (rows < 1 || length < 1 || length > rows)
        throw nb::value_error(("gather_windows: need 1 <= length <= rows, got length " + std::to_string(length) +
                               ", rows " + std::to_string(rows)).c_str());
    if ((int64_t)out.shape(0) != n * length || out.shape(1) != row_bytes)
        throw nb::value_error(("gather_windows: out must have shape (" + std::to_string(n * length) + ", " +
                               std::to_string(row_bytes) + ")").c_str());
    const int64_t* b = base.data();
    const int64_t* s = start.data();
    for (int64_t i = 0; i < n; ++i) {
        const int64_t bi = b[i / per_item];
        if (bi < 0 || bi + rows > total_rows || s[i] < 0 || s[i] >= rows)
            throw nb::index_error(("gather_windows: window " + std::to_string(i) + " (base " + std::to_string(bi) +
                                   ", start " + std::to_string(s[i]) + ") lies outside the " +
                                   std::to_string(total_rows) + "-row source of " + std::to_string(rows) +
                                   "-row streams").c_str());
    }
    const uint8_t* sp = src.data();
    uint8_t* op = out.data();
    auto work = [=](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
            uint8_t* dst = op + (size_t)(i * length) * row_bytes;
            const int64_t bi = b[i / per_item];
            int64_t first = std::min(length, rows - s[i]);
            std::memcpy(dst, sp + (size_t)(bi + s[i]) * row_bytes, (size_t)first * row_bytes);
            if (first < length)
                std::memcpy(dst + (size_t)first * row_bytes, sp + (size_t)bi * row_bytes,
                            (size_t)(length - first) * row_bytes);
        }
    };
    const size_t bytes = (size_t)(n * length) * row_bytes;
    int64_t parts = std::min<int64_t>({(int64_t)std::max(1, num_threads), n, (int64_t)(bytes / kBytesPerThread)});
    nb::gil_scoped_release release;
    if (parts <= 1) {
        work(0, n);
        return;
    }
    std::lock_guard<std::mutex> lock(gather_mutex);
    if (gather_pool && gather_pool_pid != getpid()) (void)gather_pool.release();  // leak: its threads are gone
    if (!gather_pool || gather_pool->threads() != num_threads) {
        gather_pool = std::make_unique<arbor::Pool>(num_threads, kGatherSpin);
        gather_pool_pid = getpid();
    }
    gather_pool->run((int)n, [&](int lo, int hi) { work(lo, hi); }, (int)(n / parts));
}

// ---------------------------------------------------------------- add
// add_step: one vector-env step written into every env's stream, the common
// case of ReplayBase._add_rows once any new episodes have been started there
// (every env has a current row). The same operations, in the same order per
// env, as the numpy code it replaces; the property tests compare both with a
// naive reference.
template <typename T>
using Vec = nb::ndarray<T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <typename T>
using Mat = nb::ndarray<T, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

static constexpr uint8_t kHasTransition = 1;

static std::string dims(int64_t a, int64_t b) { return "(" + std::to_string(a) + ", " + std::to_string(b) + ")"; }

// Actions arrive either as storage bytes (`action`, n_env rows) or, for
// discrete spaces, as int64 indices (`action_index`, checked against
// [action_low, action_high] and narrowed to the storage width); the other is
// empty. Returns (transitions overwritten, new maximum of written), or
// (-1, 0) without writing anything when some env has no current row (its
// episode must be started first).
static nb::tuple add_step(Mat<uint8_t> obs_rows, Mat<const uint8_t> next_obs, int64_t frame_offset,
                          Mat<uint8_t> action_rows, Mat<const uint8_t> action, Vec<const int64_t> action_index,
                          int64_t action_low, int64_t action_high, Vec<float> reward_rows,
                          Vec<const float> reward, Vec<const uint8_t> terminated, Vec<const uint8_t> truncated,
                          Vec<uint8_t> flags, Vec<bool> sampleable, Vec<int64_t> row_id, Vec<int64_t> written,
                          Vec<int64_t> head, Vec<int64_t> ep_start, Vec<int64_t> ids, int64_t rows, int64_t stack,
                          int64_t lookahead, int64_t max_written) {
    const int64_t n_env = (int64_t)written.shape(0);
    const int64_t total = (int64_t)flags.shape(0);
    const size_t frame = obs_rows.shape(1), act_bytes = action_rows.shape(1);
    auto need = [](bool ok, const std::string& what) {
        if (!ok) throw nb::value_error(("add_step: " + what).c_str());
    };
    need(rows >= 1 && stack >= 1 && lookahead >= 1 && total == n_env * rows, "inconsistent stream sizes");
    need((int64_t)obs_rows.shape(0) == total && (int64_t)action_rows.shape(0) == total &&
             (int64_t)reward_rows.shape(0) == total && (int64_t)sampleable.shape(0) == total &&
             (int64_t)row_id.shape(0) == total, "storage arrays must have one row per slot");
    need((int64_t)next_obs.shape(0) == n_env && frame_offset >= 0 && frame_offset + frame <= next_obs.shape(1),
         "next_obs must be " + dims(n_env, frame_offset + frame) + " bytes or wider");
    const bool indexed = action_index.shape(0) != 0;
    if (indexed) {
        need((int64_t)action_index.shape(0) == n_env && action.shape(0) == 0 &&
                 (act_bytes == 1 || act_bytes == 2 || act_bytes == 4 || act_bytes == 8),
             "action_index must have num_envs entries (and action none) for a 1, 2, 4 or 8-byte action store");
        for (int64_t e = 0; e < n_env; ++e) {
            const int64_t a = action_index.data()[e];
            if (a < action_low || a > action_high)
                throw nb::value_error(("action: values must lie in [" + std::to_string(action_low) + ", " +
                                       std::to_string(action_high) + "]").c_str());
        }
    } else {
        need((int64_t)action.shape(0) == n_env && action.shape(1) == act_bytes,
             "action must be " + dims(n_env, act_bytes) + " bytes");
    }
    for (auto s : {reward.shape(0), terminated.shape(0), truncated.shape(0), head.shape(0), ep_start.shape(0), ids.shape(0)})
        need((int64_t)s == n_env, "per-env arrays must have num_envs entries");
    int64_t* w = written.data();
    int64_t* h = head.data();
    for (int64_t e = 0; e < n_env; ++e)
        if (h[e] < 0) return nb::make_tuple(-1, 0);
    for (int64_t e = 0; e < n_env; ++e)
        need(w[e] > h[e], "env " + std::to_string(e) + " has its current row past its written rows");

    uint8_t* fl = flags.data();
    bool* ok = sampleable.data();
    int64_t* ep = ep_start.data();
    int64_t removed = 0, new_max = 0;
    for (int64_t e = 0; e < n_env; ++e) new_max = std::max(new_max, w[e] + 1);
    {
        nb::gil_scoped_release release;
        for (int64_t e = 0; e < n_env; ++e) {
            const int64_t base = e * rows, hd = h[e], wr = w[e];
            const int64_t hs = base + hd % rows, ns = base + wr % rows;
            const bool term = terminated.data()[e] != 0, trunc = truncated.data()[e] != 0;
            uint8_t* act_out = action_rows.data() + (size_t)hs * act_bytes;
            if (indexed) {
                const int64_t a = action_index.data()[e];
                switch (act_bytes) {  // the store is uint8, int16, int32 or int64 (replay/spaces.py)
                    case 1: { uint8_t v = (uint8_t)a; std::memcpy(act_out, &v, 1); break; }
                    case 2: { int16_t v = (int16_t)a; std::memcpy(act_out, &v, 2); break; }
                    case 4: { int32_t v = (int32_t)a; std::memcpy(act_out, &v, 4); break; }
                    default: std::memcpy(act_out, &a, 8);
                }
            } else {
                std::memcpy(act_out, action.data() + (size_t)e * act_bytes, act_bytes);
            }
            reward_rows.data()[hs] = reward.data()[e];
            fl[hs] = (uint8_t)(kHasTransition | (term ? 2 : 0) | (trunc ? 4 : 0));
            if (max_written >= rows) removed += (fl[ns] & kHasTransition) ? 1 : 0;
            std::memcpy(obs_rows.data() + (size_t)ns * frame, next_obs.data() + (size_t)e * next_obs.shape(1) + frame_offset,
                        frame);
            fl[ns] = 0;
            row_id.data()[ns] = wr * n_env + e;
            const int64_t nw = wr + 1;
            w[e] = nw;
            ids.data()[e] = hd * n_env + e;
            // Sampleable mask: the row whose oldest stack frame was just overwritten ...
            const int64_t oldest_needed = nw - rows + stack - 1, lost = oldest_needed - 1;
            if (new_max - rows + stack - 2 >= 0 && lost >= 0) ok[base + lost % rows] = false;
            // ... the row whose lookahead window just closed ...
            const int64_t closed = hd + 1 - lookahead, ep_first = ep[e] + stack - 1;
            if (closed >= ep_first && closed >= oldest_needed) ok[base + closed % rows] = true;
            // ... and, at an episode end, its last `lookahead` rows.
            if (term || trunc) {
                for (int64_t j = 0; j < lookahead; ++j) {
                    const int64_t tail = hd - j;
                    if (tail >= ep_first && tail >= oldest_needed) ok[base + tail % rows] = true;
                }
                ep[e] = nw;
                h[e] = -1;
            } else {
                h[e] = wr;
            }
        }
    }
    return nb::make_tuple(removed, new_max);
}

void register_replay(nb::module_& m) {
    // Arrays the kernels write must be passed as they are (noconvert): an implicit
    // contiguous or dtype-converted copy would take the writes and be thrown away.
    m.def("gather_windows", &gather_windows, "src"_a, "base"_a, "start"_a, "length"_a, "rows"_a, "out"_a.noconvert(),
          "num_threads"_a = 1,
          "Copy window i = rows start[i] .. start[i] + length - 1 (mod rows) of the stream at slot base[i // W]\n"
          "of src (slots x row bytes), W = len(start) // len(base), into out rows i * length ...\n"
          "Used by replay/core.py.");
    m.def("add_step", &add_step, "obs_rows"_a.noconvert(), "next_obs"_a, "frame_offset"_a,
          "action_rows"_a.noconvert(), "action"_a, "action_index"_a, "action_low"_a, "action_high"_a,
          "reward_rows"_a.noconvert(), "reward"_a, "terminated"_a, "truncated"_a, "flags"_a.noconvert(),
          "sampleable"_a.noconvert(), "row_id"_a.noconvert(), "written"_a.noconvert(), "head"_a.noconvert(),
          "ep_start"_a.noconvert(), "ids"_a.noconvert(), "rows"_a, "stack"_a, "lookahead"_a, "max_written"_a,
          "Write one vector-env step into the replay's streams (replay/core.py); returns\n"
          "(transitions overwritten, new maximum of written), or (-1, 0) and writes nothing when an env\n"
          "has no current row.");
}
