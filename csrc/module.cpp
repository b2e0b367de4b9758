// Python bindings of the search core.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <string>

namespace nb = nanobind;

NB_MODULE(_core, m) {
    m.doc() = "Batched Monte Carlo tree search core (C++).";
    m.def("source_fingerprint", []() { return std::string(ARBOR_SOURCE_FINGERPRINT); },
          "SHA-256 over the csrc/ sources this module was compiled from.");
}
