// Replay gather kernel: copy windows of consecutive rows out of the replay's
// per-env circular streams (replay/core.py: slot = env * rows + row).
//
// Window i starts at stream row start[i] of the env whose first slot is
// base[i / W] (W = len(start) / len(base) windows per item) and covers
// `length` rows, wrapping from row rows - 1 to row 0. Each
// window is at most two contiguous runs of the source, copied with memcpy
// into consecutive rows of `out`. Rows are opaque bytes, so one kernel serves
// every observation dtype. The GIL is released; large gathers are split over
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

#ifndef GATHER_KB
#define GATHER_KB 512
#endif
#ifndef GATHER_SPIN
#define GATHER_SPIN 2000
#endif

namespace nb = nanobind;
using namespace nb::literals;

using Bytes2D = nb::ndarray<uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Index1D = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// Below this many bytes per thread, splitting costs more than it saves.
static constexpr size_t kBytesPerThread = size_t(GATHER_KB) << 10;
static constexpr int kGatherSpin = GATHER_SPIN;

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
    if (!gather_pool || gather_pool->threads() != (int)parts) {
        gather_pool = std::make_unique<arbor::Pool>((int)parts, kGatherSpin);
        gather_pool_pid = getpid();
    }
    gather_pool->run((int)n, [&](int lo, int hi) { work(lo, hi); }, (int)(n / parts));
}

void register_gather(nb::module_& m) {
    m.def("gather_windows", &gather_windows, "src"_a, "base"_a, "start"_a, "length"_a, "rows"_a, "out"_a,
          "num_threads"_a = 1,
          "Copy window i = rows start[i] .. start[i] + length - 1 (mod rows) of the stream at slot base[i // W]\n"
          "of src (slots x row bytes), W = len(start) // len(base), into out rows i * length ...\n"
          "Used by replay/core.py.");
}
