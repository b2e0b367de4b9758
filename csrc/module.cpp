// Python bindings of the compiled core: the batched search forest, the replay kernels and the image shift.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/pair.h>
#include <string>

#include "arbor_tree.h"

namespace nb = nanobind;

void register_forest(nb::module_& m);
void register_replay(nb::module_& m);
void register_augment(nb::module_& m);

NB_MODULE(_core, m) {
    m.doc() = "Batched Monte Carlo tree search core (C++), used through planners.mcts, the replay kernels (window gather, one-step add) used by replay/, and the uint8 image shift used by agents/_augment.py.";
    m.def("source_fingerprint", []() { return std::string(ARBOR_SOURCE_FINGERPRINT); },
          "SHA-256 over the csrc/ sources this module was compiled from.");
    m.def("cuda_enabled", []() {
#ifdef ARBOR_WITH_CUDA
        return true;
#else
        return false;
#endif
    }, "Whether this build compiled the CUDA kernels (csrc/arbor_kernels.cu).");
    m.def("simd", []() {
#if defined(ARBOR_AVX2)
        return std::string(arbor::simd_level >= 2 ? "avx2" : "sse2");
#elif defined(ARBOR_SSE2)
        return std::string("sse2");
#else
        return std::string("scalar");
#endif
    }, "The vector path the tree search's pUCT scoring takes on this CPU: avx2, sse2 or scalar "
       "(ARBOR_SIMD=sse2 in the environment before import forces sse2).");
    register_forest(m);
    register_replay(m);
    register_augment(m);
}
