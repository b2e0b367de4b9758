// Image augmentation kernel behind agents/_augment.py: DrQ's random shift of
// a uint8 batch.
//
// shift_images: out[b, c, i, j] = src[b, c, clamp(i + dy_b, 0, H - 1), clamp(j + dx_b, 0, W - 1)]
// with (dy_b, dx_b) = offsets[b]; the same values as the torch gather in
// agents/_augment.py, which the tests compare it with. Each output row is one
// source row: a memcpy of its inside part and the edge byte repeated on the
// side the shift uncovers. shift_images_nhwc writes the same values laid out
// B x H x W x C (torch's channels-last), the layout the suite's CPU
// convolutions take, so that no separate transposing copy is needed. The GIL
// is released.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace nb = nanobind;
using namespace nb::literals;

using Images = nb::ndarray<uint8_t, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
// The source may be a strided batch (replay samples are views into one gather of obs and
// next-obs frames) as long as each image is contiguous.
using ConstImages = nb::ndarray<const uint8_t, nb::ndim<4>, nb::device::cpu>;
using Offsets = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
static constexpr bool kLittleEndian = false;
#else
static constexpr bool kLittleEndian = true;
#endif

// One shifted source row: dst[j] = row[clamp(j + dx, 0, w - 1)].
static inline void shift_row(uint8_t* dst, const uint8_t* row, int64_t w, int64_t lo, int64_t hi, int64_t dx) {
    if (lo > 0) std::memset(dst, row[0], (size_t)lo);
    if (hi > lo) std::memcpy(dst + lo, row + lo + dx, (size_t)(hi - lo));
    if (hi < w) std::memset(dst + hi, row[w - 1], (size_t)(w - hi));
}

// Checks shared by both layouts; returns src's batch stride.
static int64_t check_shift(const ConstImages& src, const Offsets& offsets, const Images& out, bool nhwc) {
    const int64_t b = (int64_t)src.shape(0), c = (int64_t)src.shape(1);
    const int64_t h = (int64_t)src.shape(2), w = (int64_t)src.shape(3);
    const size_t want[4] = {src.shape(0), nhwc ? src.shape(2) : src.shape(1), nhwc ? src.shape(3) : src.shape(2),
                            nhwc ? src.shape(1) : src.shape(3)};
    // The kernel's name goes into the message only when one is raised: no string is built per call.
    auto fail = [nhwc](const std::string& what) {
        throw nb::value_error(((nhwc ? "shift_images_nhwc: " : "shift_images: ") + what).c_str());
    };
    for (size_t d = 0; d < 4; ++d)
        if (out.shape(d) != want[d])
            fail(nhwc ? "out must have shape (B, H, W, C) for a (B, C, H, W) src" : "out must have the shape of src");
    if ((int64_t)offsets.shape(0) != b || offsets.shape(1) != 2)
        fail("offsets must have shape (" + std::to_string(b) + ", 2)");
    if (src.stride(3) != 1 || src.stride(2) != w || src.stride(1) != h * w || src.stride(0) < c * h * w)
        fail("each image of src must be contiguous (C x H x W)");
    if (src.data() == out.data()) fail("out must not be src");
    return src.stride(0);
}

// Both layouts: nhwc writes out as B x H x W x C, otherwise as src's B x C x H x W.
static void shift_batch(ConstImages src, Offsets offsets, Images out, bool nhwc) {
    const int64_t batch_stride = check_shift(src, offsets, out, nhwc);
    const int64_t b = (int64_t)src.shape(0), c = (int64_t)src.shape(1);
    const int64_t h = (int64_t)src.shape(2), w = (int64_t)src.shape(3);
    if (b < 1 || c < 1 || h < 1 || w < 1) return;
    const uint8_t* sp = src.data();
    uint8_t* op = out.data();
    const int64_t* off = offsets.data();
    nb::gil_scoped_release release;
    std::vector<uint8_t> rows(nhwc ? (size_t)(c * w) : 0);
    for (int64_t n = 0; n < b; ++n) {
        const int64_t dy = off[2 * n], dx = off[2 * n + 1];
        // Output columns [lo, hi) read source columns lo + dx ..; the ones left of lo repeat
        // column 0, the ones from hi on repeat column w - 1.
        const int64_t lo = std::clamp<int64_t>(-dx, 0, w), hi = std::clamp<int64_t>(w - dx, lo, w);
        const uint8_t* image = sp + (size_t)(n * batch_stride);
        if (!nhwc) {
            for (int64_t ch = 0; ch < c; ++ch) {
                uint8_t* dst = op + (size_t)((n * c + ch) * h * w);
                for (int64_t i = 0; i < h; ++i, dst += w)
                    shift_row(dst, image + ch * h * w + std::clamp<int64_t>(i + dy, 0, h - 1) * w, w, lo, hi, dx);
            }
            continue;
        }
        // Each output row: the C shifted source rows side by side, then interleaved pixel by pixel
        // (for the usual 4-frame stacks, one 32-bit word per pixel, which the compiler vectorises).
        for (int64_t i = 0; i < h; ++i) {
            const int64_t r = std::clamp<int64_t>(i + dy, 0, h - 1) * w;
            for (int64_t ch = 0; ch < c; ++ch) shift_row(rows.data() + ch * w, image + ch * h * w + r, w, lo, hi, dx);
            uint8_t* dst = op + (size_t)(((n * h + i) * w) * c);
            if (c == 4 && kLittleEndian) {
                const uint8_t *r0 = rows.data(), *r1 = r0 + w, *r2 = r1 + w, *r3 = r2 + w;
                for (int64_t j = 0; j < w; ++j) {
                    const uint32_t px = (uint32_t)r0[j] | ((uint32_t)r1[j] << 8) | ((uint32_t)r2[j] << 16) |
                                        ((uint32_t)r3[j] << 24);
                    std::memcpy(dst + 4 * j, &px, 4);   // little-endian: byte ch of the word is channel ch
                }
            } else {
                for (int64_t j = 0; j < w; ++j)
                    for (int64_t ch = 0; ch < c; ++ch) dst[j * c + ch] = rows[(size_t)(ch * w + j)];
            }
        }
    }
}

static void shift_images(ConstImages src, Offsets offsets, Images out) { shift_batch(src, offsets, out, false); }
static void shift_images_nhwc(ConstImages src, Offsets offsets, Images out) { shift_batch(src, offsets, out, true); }

void register_augment(nb::module_& m) {
    m.def("shift_images", &shift_images, "src"_a, "offsets"_a, "out"_a.noconvert(),
          "out[b, c, i, j] = src[b, c, clamp(i + dy_b), clamp(j + dx_b)] for uint8 B x C x H x W batches,\n"
          "(dy_b, dx_b) = offsets[b]; DrQ's random shift (agents/_augment.py).");
    m.def("shift_images_nhwc", &shift_images_nhwc, "src"_a, "offsets"_a, "out"_a.noconvert(),
          "shift_images with out laid out B x H x W x C: out[b, i, j, c] = src[b, c, clamp(i + dy_b), clamp(j + dx_b)].");
}
