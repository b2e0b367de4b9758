// Image augmentation kernel behind agents/_augment.py: DrQ's random shift of
// a uint8 batch.
//
// shift_images: out[b, c, i, j] = src[b, c, clamp(i + dy_b, 0, H - 1), clamp(j + dx_b, 0, W - 1)]
// with (dy_b, dx_b) = offsets[b]; the same values as the torch gather in
// agents/_augment.py, which the tests compare it with. Each output row is one
// source row: a memcpy of its inside part and the edge byte repeated on the
// side the shift uncovers. The GIL is released.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

namespace nb = nanobind;
using namespace nb::literals;

using Images = nb::ndarray<uint8_t, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
// The source may be a strided batch (replay samples are views into one gather of obs and
// next-obs frames) as long as each image is contiguous.
using ConstImages = nb::ndarray<const uint8_t, nb::ndim<4>, nb::device::cpu>;
using Offsets = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

static void shift_images(ConstImages src, Offsets offsets, Images out) {
    const int64_t b = (int64_t)src.shape(0), c = (int64_t)src.shape(1);
    const int64_t h = (int64_t)src.shape(2), w = (int64_t)src.shape(3);
    for (size_t d = 0; d < 4; ++d)
        if (out.shape(d) != src.shape(d))
            throw nb::value_error("shift_images: out must have the shape of src");
    if ((int64_t)offsets.shape(0) != b || offsets.shape(1) != 2)
        throw nb::value_error(("shift_images: offsets must have shape (" + std::to_string(b) + ", 2)").c_str());
    if (src.stride(3) != 1 || src.stride(2) != w || src.stride(1) != h * w || src.stride(0) < c * h * w)
        throw nb::value_error("shift_images: each image of src must be contiguous (C x H x W)");
    if (src.data() == out.data()) throw nb::value_error("shift_images: out must not be src");
    if (b < 1 || c < 1 || h < 1 || w < 1) return;
    const int64_t batch_stride = src.stride(0);
    const uint8_t* sp = src.data();
    uint8_t* op = out.data();
    const int64_t* off = offsets.data();
    nb::gil_scoped_release release;
    for (int64_t n = 0; n < b; ++n) {
        const int64_t dy = off[2 * n], dx = off[2 * n + 1];
        // Output columns [lo, hi) read source columns lo + dx ..; the ones left of lo repeat
        // column 0, the ones from hi on repeat column w - 1.
        const int64_t lo = std::clamp<int64_t>(-dx, 0, w), hi = std::clamp<int64_t>(w - dx, lo, w);
        for (int64_t ch = 0; ch < c; ++ch) {
            const uint8_t* plane = sp + (size_t)(n * batch_stride + ch * h * w);
            uint8_t* dst = op + (size_t)((n * c + ch) * h * w);
            for (int64_t i = 0; i < h; ++i, dst += w) {
                const uint8_t* row = plane + (size_t)(std::clamp<int64_t>(i + dy, 0, h - 1) * w);
                if (lo > 0) std::memset(dst, row[0], (size_t)lo);
                if (hi > lo) std::memcpy(dst + lo, row + lo + dx, (size_t)(hi - lo));
                if (hi < w) std::memset(dst + hi, row[w - 1], (size_t)(w - hi));
            }
        }
    }
}

void register_augment(nb::module_& m) {
    m.def("shift_images", &shift_images, "src"_a, "offsets"_a, "out"_a.noconvert(),
          "out[b, c, i, j] = src[b, c, clamp(i + dy_b), clamp(j + dx_b)] for uint8 B x C x H x W batches,\n"
          "(dy_b, dx_b) = offsets[b]; DrQ's random shift (agents/_augment.py).");
}
