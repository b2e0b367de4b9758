// CPU forest of B search trees: storage, input validation and the
// nanobind bindings. The per-tree algorithms live in arbor_tree.h (shared with
// the CUDA kernels).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "arbor_tree.h"
#include "pool.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace arbor {

// Raised when a tree needs more nodes than the forest was built with.
struct NodeBudgetExceeded : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------- input arrays
// A read-only view of any CPU ndarray (numpy, torch, ...) of a few dtypes and
// any strides; elements are read as double / bool without copying the array.
enum class Kind { F32, F64, I32, I64, U8, BOOL };

struct In {
    const char* data = nullptr;
    Kind kind = Kind::F64;
    int64_t s0 = 0, s1 = 0;  // strides in bytes
    bool present = false;

    double get(int64_t i, int64_t j = 0) const {
        const char* p = data + i * s0 + j * s1;
        switch (kind) {
            case Kind::F32: { float v; std::memcpy(&v, p, 4); return v; }
            case Kind::F64: { double v; std::memcpy(&v, p, 8); return v; }
            case Kind::I32: { int32_t v; std::memcpy(&v, p, 4); return (double)v; }
            case Kind::I64: { int64_t v; std::memcpy(&v, p, 8); return (double)v; }
            case Kind::U8: return (double)*(const uint8_t*)p;
            case Kind::BOOL: return *(const uint8_t*)p ? 1.0 : 0.0;
        }
        return 0.0;
    }
    int64_t geti(int64_t i) const {
        const char* p = data + i * s0;
        switch (kind) {
            case Kind::I32: { int32_t v; std::memcpy(&v, p, 4); return v; }
            case Kind::I64: { int64_t v; std::memcpy(&v, p, 8); return v; }
            case Kind::U8: return *(const uint8_t*)p;
            case Kind::BOOL: return *(const uint8_t*)p ? 1 : 0;
            default: return 0;
        }
    }
    bool flag(int64_t i, int64_t j = 0) const { return get(i, j) != 0.0; }

    // Row i as doubles / 0-1 flags (the dtype switch is outside the loop).
    template <typename T>
    void row_as(int64_t i, int n, double* out) const {
        const char* p = data + i * s0;
        for (int j = 0; j < n; ++j) {
            T v;
            std::memcpy(&v, p + j * s1, sizeof(T));
            out[j] = (double)v;
        }
    }
    void row(int64_t i, int n, double* out) const {
        switch (kind) {
            case Kind::F32: row_as<float>(i, n, out); break;
            case Kind::F64: row_as<double>(i, n, out); break;
            default: for (int j = 0; j < n; ++j) out[j] = get(i, j);
        }
    }
    void row_flags(int64_t i, int n, uint8_t* out) const {
        const char* p = data + i * s0;
        if (kind == Kind::BOOL || kind == Kind::U8) {
            for (int j = 0; j < n; ++j) out[j] = p[j * s1] != 0;
        } else {
            for (int j = 0; j < n; ++j) out[j] = get(i, j) != 0.0;
        }
    }
};

enum Allowed { FLOATS = 1, INTS = 2, BOOLS = 4 };

static std::string shape_str(const nb::ndarray<>& a) {
    std::string s = "(";
    for (size_t d = 0; d < a.ndim(); ++d) {
        if (d) s += ", ";
        s += std::to_string(a.shape(d));
    }
    if (a.ndim() == 1) s += ",";
    return s + ")";
}

// Check name's array: type, device, ndim, shape (-1: any) and dtype family.
static In view_of(nb::handle obj, const char* name, std::vector<int64_t> shape, int allowed, bool optional = false) {
    In in;
    if (obj.is_none()) {
        if (optional) return in;
        throw nb::type_error((std::string(name) + " is required (got None)").c_str());
    }
    nb::ndarray<> a;
    if (!nb::try_cast(obj, a, false)) {
        std::string tn = nb::inst_name(obj).c_str();
        throw nb::type_error((std::string(name) + " must be a numpy array or a torch tensor (CPU), got " + tn).c_str());
    }
    if (a.device_type() != nb::device::cpu::value)
        throw nb::type_error((std::string(name) + " must live in CPU memory (move it with .cpu())").c_str());
    std::string expect = "(";
    for (size_t d = 0; d < shape.size(); ++d) {
        if (d) expect += ", ";
        expect += shape[d] < 0 ? std::string("any") : std::to_string(shape[d]);
    }
    if (shape.size() == 1) expect += ",";
    expect += ")";
    bool ok = a.ndim() == shape.size();
    for (size_t d = 0; ok && d < shape.size(); ++d)
        if (shape[d] >= 0 && (int64_t)a.shape(d) != shape[d]) ok = false;
    if (!ok)
        throw nb::value_error(
            (std::string(name) + " has shape " + shape_str(a) + ", expected " + expect).c_str());
    auto dt = a.dtype();
    if ((allowed & FLOATS) && dt == nb::dtype<float>()) in.kind = Kind::F32;
    else if ((allowed & FLOATS) && dt == nb::dtype<double>()) in.kind = Kind::F64;
    else if ((allowed & INTS) && dt == nb::dtype<int32_t>()) in.kind = Kind::I32;
    else if ((allowed & INTS) && dt == nb::dtype<int64_t>()) in.kind = Kind::I64;
    else if ((allowed & BOOLS) && dt == nb::dtype<bool>()) in.kind = Kind::BOOL;
    else if ((allowed & BOOLS) && dt == nb::dtype<uint8_t>()) in.kind = Kind::U8;
    else {
        std::string want;
        if (allowed & FLOATS) want += "float32/float64 ";
        if (allowed & INTS) want += "int32/int64 ";
        if (allowed & BOOLS) want += "bool/uint8 ";
        throw nb::type_error((std::string(name) + " has an unsupported dtype; expected " + want).c_str());
    }
    size_t item = dt.bits / 8;
    in.data = (const char*)a.data();
    in.s0 = a.ndim() > 0 ? a.stride(0) * (int64_t)item : 0;
    in.s1 = a.ndim() > 1 ? a.stride(1) * (int64_t)item : 0;
    in.present = true;
    return in;
}

// Fast path of view_of for plain numpy arrays (the common case, once per
// argument per simulation step): read dtype, shape and strides through the
// buffer protocol without building an nb::ndarray. Anything it does not
// recognise (other types, unusual formats, a wrong shape or dtype) goes to
// view_of, which accepts the same arrays and raises the same errors.
static bool numpy_view(nb::handle obj, std::initializer_list<int64_t> shape, int allowed, In& in) {
    PyObject* o = obj.ptr();
    if (std::strcmp(Py_TYPE(o)->tp_name, "numpy.ndarray") != 0) return false;
    Py_buffer view;
    // PyBUF_RECORDS asks for a writable buffer, as the nb::ndarray<> cast of view_of does:
    // read-only arrays take the slow path and get its error.
    if (PyObject_GetBuffer(o, &view, PyBUF_RECORDS) != 0) {
        PyErr_Clear();
        return false;
    }
    bool ok = view.ndim == (int)shape.size() && view.format != nullptr && view.format[0] != 0 && view.format[1] == 0;
    int d = 0;
    for (int64_t s : shape) {
        if (!ok) break;
        if (s >= 0 && (int64_t)view.shape[d] != s) ok = false;
        ++d;
    }
    Kind kind = Kind::F64;
    if (ok) {
        char c = view.format[0];
        Py_ssize_t item = view.itemsize;
        bool integer = c == 'i' || c == 'l' || c == 'q';
        if ((allowed & FLOATS) && c == 'f' && item == 4) kind = Kind::F32;
        else if ((allowed & FLOATS) && c == 'd' && item == 8) kind = Kind::F64;
        else if ((allowed & INTS) && integer && item == 4) kind = Kind::I32;
        else if ((allowed & INTS) && integer && item == 8) kind = Kind::I64;
        else if ((allowed & BOOLS) && c == '?' && item == 1) kind = Kind::BOOL;
        else if ((allowed & BOOLS) && c == 'B' && item == 1) kind = Kind::U8;
        else ok = false;
    }
    if (ok) {
        in.data = (const char*)view.buf;
        in.kind = kind;
        in.s0 = view.ndim > 0 ? (int64_t)view.strides[0] : 0;
        in.s1 = view.ndim > 1 ? (int64_t)view.strides[1] : 0;
        in.present = true;
    }
    PyBuffer_Release(&view);
    return ok;
}

static In view_fast(nb::handle obj, const char* name, std::initializer_list<int64_t> shape, int allowed,
                    bool optional = false) {
    In in;
    if (obj.is_none() && optional) return in;
    if (numpy_view(obj, shape, allowed, in)) return in;
    return view_of(obj, name, std::vector<int64_t>(shape), allowed, optional);
}

// New numpy array (owned by Python) of the given shape.
template <typename T>
static nb::ndarray<nb::numpy, T> new_array(std::initializer_list<size_t> shape) {
    size_t n = 1;
    for (size_t s : shape) n *= s;
    T* buf = new T[n == 0 ? 1 : n]();
    nb::capsule owner(buf, [](void* p) noexcept { delete[] (T*)p; });
    return nb::ndarray<nb::numpy, T>(buf, shape.size(), shape.begin(), owner);
}

// ---------------------------------------------------------------- the forest
// Idle workers of a forest's pool: 2,000 spin-loop hints (about 50 us here),
// then 2,000 yields, then sleep. A search step's two jobs come microseconds
// apart; with the yields alone two threads were slower than one at 64 trees
// (2.1-2.5M against 2.8M simulations per second, B=64, S=50, A=18), with the
// hints 1.6x faster than one (4.1-4.7M). 250 hints were too few (2.1-2.4M).
static constexpr int kForestSpin = 2000;
static constexpr int kForestPauses = 2000;

class Forest {
   public:
    Forest(int batch, int num_actions, int max_nodes, int leaves_per_step, int num_threads, const Params& params)
        : p_(params), pool_(num_threads, kForestSpin, kForestPauses) {
        if (batch < 1) throw nb::value_error("batch_size must be >= 1");
        if (num_actions < 1) throw nb::value_error("num_actions must be >= 1");
        if (max_nodes < 2) throw nb::value_error("max_nodes must be >= 2 (the root plus one node per simulation)");
        if (leaves_per_step < 1) throw nb::value_error("leaves_per_step must be >= 1");
        if (num_threads < 1) throw nb::value_error("num_threads must be >= 1");
        if ((int64_t)batch * max_nodes * num_actions > (int64_t)1 << 34)
            throw nb::value_error("batch_size * max_nodes * num_actions is too large for one forest");
        if (!(p_.discount >= 0.0 && p_.discount <= 1.0)) throw nb::value_error("discount must lie in [0, 1]");
        if (!(p_.pb_c_base > 0.0) || !std::isfinite(p_.pb_c_init)) throw nb::value_error("pb_c_base must be > 0 and pb_c_init finite");
        if (!(p_.dirichlet_fraction >= 0.0 && p_.dirichlet_fraction <= 1.0)) throw nb::value_error("dirichlet_fraction must lie in [0, 1]");
        if (p_.dirichlet_fraction > 0.0 && !(p_.dirichlet_alpha > 0.0 && std::isfinite(p_.dirichlet_alpha)))
            throw nb::value_error("dirichlet_alpha must be a positive finite number");
        if (p_.has_known_bounds && !(p_.known_min < p_.known_max)) throw nb::value_error("known_bounds must satisfy min < max");
        if (p_.max_considered < 1) throw nb::value_error("max_num_considered_actions must be >= 1");
        if (!std::isfinite(p_.gumbel_scale) || !std::isfinite(p_.value_scale) || !std::isfinite(p_.maxvisit_init) ||
            !(p_.rescale_epsilon > 0.0))
            throw nb::value_error("gumbel_scale, value_scale, maxvisit_init must be finite and rescale_epsilon > 0");
        if (p_.algorithm != ALG_PUCT && p_.algorithm != ALG_GUMBEL) throw nb::value_error("unknown algorithm");
        if (p_.algorithm == ALG_GUMBEL && p_.dirichlet_fraction > 0.0)
            throw nb::value_error("Gumbel search does not use Dirichlet noise (set dirichlet_fraction=0)");
        p_.leaves_per_step = leaves_per_step;
        B_ = batch;
        A_ = num_actions;
        N_ = max_nodes;
        K_ = leaves_per_step;
        size_t nodes = (size_t)B_ * N_, edges = nodes * A_, ta = (size_t)B_ * A_, leaves = (size_t)B_ * K_;
        visits_.assign(nodes, 0);
        inflight_.assign(nodes, 0);
        parent_.assign(nodes, -1);
        action_.assign(nodes, -1);
        state_.assign(nodes, 0);
        terminal_.assign(nodes, 0);
        value_sum_.assign(nodes, 0.0);
        raw_value_.assign(nodes, 0.0);
        reward_.assign(nodes, 0.0);
        children_.assign(edges, -1);
        edge_visits_.assign(edges, 0);
        edge_q_.assign(edges, 0.0);
        edge_inflight_.assign(edges, 0);
        logits_.assign(edges, 0.0);
        probs_.assign(edges, 0.0);
        legal_.assign(edges, 0);
        num_nodes_.assign(B_, 0);
        nodes_before_.assign(B_, 0);
        sims_left_.assign(B_, 0);
        step_leaves_.assign(B_, 0);
        num_considered_.assign(B_, 0);
        error_.assign(B_, 0);
        mm_lo_.assign(B_, 0.0);
        mm_hi_.assign(B_, 0.0);
        rng_.assign(B_, 0);
        root_probs_.assign(ta, 0.0);
        gumbel_.assign(ta, 0.0);
        scratch_.assign(ta * 3, 0.0);
        stage_logits_.assign(leaves * A_, 0.0);
        stage_legal_.assign(leaves * A_, 0);
        stage_reward_.assign(leaves, 0.0);
        stage_value_.assign(leaves, 0.0);
        stage_terminal_.assign(leaves, 0);
        stage_error_.assign(B_, 0);
        stat_len_ = std::max<int64_t>(1024, 2 * (int64_t)N_ + 2 * K_ + 2);
        pbc_table_.resize(stat_len_);
        sqrt_table_.resize(stat_len_);
        recip_table_.resize(stat_len_);
        for (int64_t n = 0; n < stat_len_; ++n) {
            pbc_table_[n] = std::log(((double)n + p_.pb_c_base + 1.0) / p_.pb_c_base) + p_.pb_c_init;
            sqrt_table_[n] = std::sqrt((double)n);
            recip_table_[n] = 1.0 / ((double)n + 1.0);
        }
        leaf_node_.assign(leaves, -1);
        leaf_parent_.assign(leaves, -1);
        leaf_action_.assign(leaves, -1);
        leaf_kind_.assign(leaves, 0);
        leaf_tree_.assign(leaves, 0);
        needs_eval_.reset(new bool[leaves]());
        pub_eval_.reset(new bool[leaves]());
        pub_tree_.assign(leaves, 0);
        pub_parent_.assign(leaves, -1);
        pub_action_.assign(leaves, -1);
        pub_node_.assign(leaves, -1);
        for (size_t m = 0; m < leaves; ++m) leaf_tree_[m] = (int32_t)(m / K_);
        node_map_.assign(nodes, -1);
        remap_.assign(nodes, -1);
        table_.assign(1, 0);
        for (int b = 0; b < B_; ++b) rng_[b] = tree_seed(0, (uint64_t)b);
        t_.B = B_; t_.A = A_; t_.N = N_; t_.K = K_;
        t_.store_logits = p_.algorithm == ALG_GUMBEL ? 1 : 0;
        t_.visits = visits_.data(); t_.inflight = inflight_.data(); t_.parent = parent_.data();
        t_.action = action_.data(); t_.state = state_.data(); t_.terminal = terminal_.data();
        t_.value_sum = value_sum_.data(); t_.raw_value = raw_value_.data(); t_.reward = reward_.data();
        t_.children = children_.data(); t_.edge_visits = edge_visits_.data(); t_.edge_q = edge_q_.data();
        t_.edge_inflight = edge_inflight_.data();
        t_.pbc_table = pbc_table_.data(); t_.sqrt_table = sqrt_table_.data();
        t_.recip_table = recip_table_.data();
        t_.stat_len = (int32_t)stat_len_;
        t_.logits = logits_.data(); t_.probs = probs_.data(); t_.legal = legal_.data();
        t_.num_nodes = num_nodes_.data(); t_.nodes_before_step = nodes_before_.data(); t_.sims_left = sims_left_.data();
        t_.step_leaves = step_leaves_.data(); t_.num_considered = num_considered_.data(); t_.error = error_.data();
        t_.mm_lo = mm_lo_.data(); t_.mm_hi = mm_hi_.data(); t_.rng = rng_.data();
        t_.root_probs = root_probs_.data(); t_.gumbel = gumbel_.data(); t_.scratch = scratch_.data();
        t_.leaf_node = leaf_node_.data(); t_.leaf_parent = leaf_parent_.data(); t_.leaf_action = leaf_action_.data();
        t_.leaf_kind = leaf_kind_.data();
        t_.considered_table = table_.data(); t_.table_len = 1;
        t_.node_map = node_map_.data(); t_.remap = remap_.data();
    }

    // -------------------------------------------------------------- API
    void seed(uint64_t seed) {
        Guard g(this);
        for (int b = 0; b < B_; ++b) rng_[b] = tree_seed(seed, (uint64_t)b);
    }
    nb::ndarray<nb::numpy, uint64_t> get_rng_state() {
        auto out = new_array<uint64_t>({(size_t)B_});
        std::memcpy(out.data(), rng_.data(), sizeof(uint64_t) * B_);
        return out;
    }
    void set_rng_state(nb::ndarray<uint64_t, nb::ndim<1>, nb::device::cpu> state) {
        Guard g(this);
        if ((int)state.shape(0) != B_) throw nb::value_error("rng_state must have shape (batch_size,)");
        for (int b = 0; b < B_; ++b) rng_[b] = state(b);
    }

    void set_roots(nb::handle prior_logits, nb::handle value, nb::handle legal_mask, bool only_missing) {
        Guard g(this);
        if (phase_ == PENDING) throw nb::value_error("set_roots called while a step is pending; call expand_and_backup or cancel first");
        In lg = view_of(prior_logits, "root prior_logits", {B_, A_}, FLOATS);
        In v = view_of(value, "root value", {B_}, FLOATS);
        In mk = view_of(legal_mask, "root legal_mask", {B_, A_}, BOOLS, true);
        for (int b = 0; b < B_; ++b) {
            if (only_missing && num_nodes_[b] > 0) continue;
            if (!std::isfinite(v.get(b)))
                throw nb::value_error(("root value of tree " + std::to_string(b) + " is not finite").c_str());
            int legal = 0;
            for (int a = 0; a < A_; ++a) {
                bool ok = !mk.present || mk.flag(b, a);
                if (!ok) continue;
                ++legal;
                if (!std::isfinite(lg.get(b, a)))
                    throw nb::value_error(("root prior_logits of tree " + std::to_string(b) + ", action " + std::to_string(a) +
                                           " is not finite (only illegal actions may hold -inf/NaN)").c_str());
            }
            if (legal == 0)
                throw nb::value_error(("root legal_mask of tree " + std::to_string(b) + " has no legal action").c_str());
        }
        for (int b = 0; b < B_; ++b) {
            if (only_missing && num_nodes_[b] > 0) continue;
            double* row = stage_logits_.data();
            uint8_t* lrow = stage_legal_.data();
            for (int a = 0; a < A_; ++a) {
                lrow[a] = (!mk.present || mk.flag(b, a)) ? 1 : 0;
                row[a] = lrow[a] ? lg.get(b, a) : 0.0;
            }
            init_root(t_, b, v.get(b), row, lrow);
        }
        phase_ = ROOTS;
    }

    void begin(int num_simulations) {
        Guard g(this);
        if (phase_ == PENDING) throw nb::value_error("begin called while a step is pending; call expand_and_backup or cancel first");
        if (num_simulations < 0) throw nb::value_error("num_simulations must be >= 0");
        for (int b = 0; b < B_; ++b) {
            if (num_nodes_[b] == 0)
                throw nb::value_error(("tree " + std::to_string(b) + " has no root: call set_roots first").c_str());
            if (p_.algorithm == ALG_GUMBEL && num_nodes_[b] != 1)
                throw nb::value_error("Gumbel search needs fresh roots (sequential halving starts from zero visits); "
                                      "do not reuse subtrees with algorithm='gumbel'");
        }
        if (p_.algorithm == ALG_GUMBEL) build_table(num_simulations);
        nb::gil_scoped_release rel;
        pool_.run(B_, [&](int b0, int b1) {
            for (int b = b0; b < b1; ++b) begin_tree(t_, p_, b, num_simulations);
        });
        phase_ = SEARCHING;
    }

    // Select up to K leaves per tree. Returns the number of leaves that need a
    // model evaluation (needs_eval rows).
    int select() {
        Guard g(this);
        if (phase_ == PENDING) throw nb::value_error("select called twice: call expand_and_backup (or cancel) for the pending leaves first");
        if (phase_ != SEARCHING) throw nb::value_error("select called before begin");
        {
            nb::gil_scoped_release rel;
            pool_.run(B_, [&](int b0, int b1) {
                for (int b = b0; b < b1; ++b) select_tree(t_, p_, b);
            });
        }
        return publish_selection();
    }

    // After select_tree ran on every tree: fail (undoing the selection) if a
    // tree ran out of nodes, else publish the leaves and return how many need
    // a model evaluation.
    int publish_selection() {
        int bad = -1;
        for (int b = 0; b < B_ && bad < 0; ++b)
            if (error_[b]) bad = b;
        if (bad >= 0) {
            for (int b = 0; b < B_; ++b) cancel_tree(t_, b);
            throw NodeBudgetExceeded(("tree " + std::to_string(bad) + " needs more than max_nodes=" + std::to_string(N_) +
                                      " nodes; build the forest with max_nodes >= nodes kept by reuse + num_simulations + 1")
                                         .c_str());
        }
        int count = 0;
        for (size_t m = 0; m < leaf_kind_.size(); ++m) {
            needs_eval_[m] = leaf_kind_[m] == LEAF_EXPAND;
            count += needs_eval_[m];
        }
        // The caller sees copies: writing into them cannot corrupt the trees.
        size_t M = leaf_kind_.size();
        std::memcpy(pub_tree_.data(), leaf_tree_.data(), M * sizeof(int32_t));
        std::memcpy(pub_parent_.data(), leaf_parent_.data(), M * sizeof(int32_t));
        std::memcpy(pub_action_.data(), leaf_action_.data(), M * sizeof(int32_t));
        std::memcpy(pub_node_.data(), leaf_node_.data(), M * sizeof(int32_t));
        std::memcpy(pub_eval_.get(), needs_eval_.get(), M * sizeof(bool));
        phase_ = PENDING;
        return count;
    }

    void cancel() {
        Guard g(this);
        if (phase_ != PENDING) return;
        for (int b = 0; b < B_; ++b) cancel_tree(t_, b);
        phase_ = SEARCHING;
    }

    void expand_and_backup(nb::handle reward, nb::handle value, nb::handle prior_logits, nb::handle legal_mask,
                           nb::handle terminal) {
        Guard g(this);
        expand_backup_locked(reward, value, prior_logits, legal_mask, terminal, false);
    }

    // With then_select, each tree selects its next leaves right after its
    // backup, in the same pool job (trees are independent, so this is the
    // same as a separate select() afterwards, one thread hand-off cheaper).
    void expand_backup_locked(nb::handle reward, nb::handle value, nb::handle prior_logits, nb::handle legal_mask,
                              nb::handle terminal, bool then_select) {
        if (phase_ != PENDING) throw nb::value_error("expand_and_backup called without pending leaves (call select first)");
        const int64_t M = (int64_t)B_ * K_;
        bool any_eval = false;
        for (int64_t m = 0; m < M; ++m) any_eval |= needs_eval_[m];
        In r, v, lg, mk, tm;
        if (any_eval || !reward.is_none()) {
            r = view_fast(reward, "reward", {M}, FLOATS);
            v = view_fast(value, "value", {M}, FLOATS);
            lg = view_fast(prior_logits, "prior_logits", {M, A_}, FLOATS);
            mk = view_fast(legal_mask, "legal_mask", {M, A_}, BOOLS, true);
            tm = view_fast(terminal, "terminal", {M}, BOOLS, true);
        }
        {
            nb::gil_scoped_release rel;
            // Pass 1: read the rows that need evaluation into staging buffers and
            // validate them. Nothing in the trees changes yet.
            pool_.run(B_, [&](int b0, int b1) {
                for (int b = b0; b < b1; ++b) {
                    stage_error_[b] = -1;
                    for (int k = 0; k < step_leaves_[b] && stage_error_[b] < 0; ++k) {
                        int64_t m = (int64_t)b * K_ + k;
                        if (!needs_eval_[m]) continue;
                        stage_reward_[m] = r.get(m);
                        stage_value_[m] = v.get(m);
                        bool term = tm.present && tm.flag(m);
                        stage_terminal_[m] = term;
                        if (!std::isfinite(stage_reward_[m]) || !std::isfinite(stage_value_[m])) {
                            stage_error_[b] = m * 4 + 0;
                            break;
                        }
                        if (term) continue;
                        double* row = stage_logits_.data() + m * A_;
                        uint8_t* lrow = stage_legal_.data() + m * A_;
                        lg.row(m, A_, row);
                        if (mk.present) mk.row_flags(m, A_, lrow);
                        else std::memset(lrow, 1, A_);
                        int legal = 0;
                        bool finite = true;
                        for (int a = 0; a < A_; ++a) {
                            if (!lrow[a]) continue;
                            ++legal;
                            finite &= std::isfinite(row[a]);
                        }
                        if (!finite) stage_error_[b] = m * 4 + 1;
                        else if (legal == 0) stage_error_[b] = m * 4 + 2;
                    }
                }
            });
        }
        int64_t bad = -1;
        for (int b = 0; b < B_ && bad < 0; ++b) bad = stage_error_[b];
        if (bad >= 0) {
            int64_t m = bad / 4;
            std::string row = "model output row " + std::to_string(m) + " (tree " + std::to_string(m / K_) + ")";
            if (bad % 4 == 0) throw nb::value_error((row + ": reward/value is not finite").c_str());
            if (bad % 4 == 1)
                throw nb::value_error((row + ": prior_logits is not finite for a legal action (only illegal actions may hold -inf/NaN)").c_str());
            throw nb::value_error((row + ": legal_mask has no legal action for a non-terminal node (mark it terminal)").c_str());
        }
        {
            nb::gil_scoped_release rel;
            // Pass 2: create the nodes and back the values up.
            pool_.run(B_, [&](int b0, int b1) {
                for (int b = b0; b < b1; ++b) {
                    for (int k = 0; k < step_leaves_[b]; ++k) {
                        int64_t m = (int64_t)b * K_ + k;
                        if (leaf_kind_[m] == LEAF_EXPAND)
                            init_node(t_, b, leaf_node_[m], stage_reward_[m], stage_value_[m], stage_terminal_[m],
                                      stage_logits_.data() + m * A_, stage_legal_.data() + m * A_);
                        backup_leaf(t_, p_, b, k);
                    }
                    step_leaves_[b] = 0;
                    if (then_select) select_tree(t_, p_, b);
                }
            });
        }
        for (int64_t m = 0; m < M; ++m) needs_eval_[m] = false;
        phase_ = SEARCHING;
    }

    // expand_and_backup followed by the next select() (one boundary crossing
    // per simulation step for Forest.run). Returns select()'s count, or -1
    // when the search has no simulations left (nothing selected).
    int expand_and_select(nb::handle reward, nb::handle value, nb::handle prior_logits, nb::handle legal_mask,
                          nb::handle terminal) {
        Guard g(this);
        // select_tree only spends simulations, backups never do: whether a
        // selection follows is known before the backups.
        bool more = phase_ == PENDING && simulations_left() > 0;
        expand_backup_locked(reward, value, prior_logits, legal_mask, terminal, more);
        if (!more) return -1;
        return publish_selection();
    }

    int simulations_left() const {
        int m = 0;
        for (int b = 0; b < B_; ++b) m = std::max(m, sims_left_[b]);
        return m;
    }

    nb::dict results(double temperature) {
        Guard g(this);
        if (phase_ == PENDING) throw nb::value_error("results called while a step is pending");
        if (phase_ == EMPTY) throw nb::value_error("results called before any search");
        if (!(temperature >= 0.0) || !std::isfinite(temperature)) throw nb::value_error("temperature must be a finite number >= 0");
        size_t B = B_, A = A_;
        auto visits = new_array<int32_t>({B, A});
        auto q = new_array<double>({B, A});
        auto cq = new_array<double>({B, A});
        auto imp = new_array<double>({B, A});
        auto vp = new_array<double>({B, A});
        auto rv = new_array<double>({B});
        auto sel = new_array<int32_t>({B});
        {
            int32_t* pv = visits.data(); double* pq = q.data(); double* pcq = cq.data(); double* pimp = imp.data();
            double* pvp = vp.data(); double* prv = rv.data(); int32_t* psel = sel.data();
            nb::gil_scoped_release rel;
            pool_.run(B_, [&](int b0, int b1) {
                for (int b = b0; b < b1; ++b) {
                    size_t o = (size_t)b * A;
                    root_summary(t_, p_, b, temperature, pv + o, pq + o, pcq + o, pimp + o, pvp + o, prv + b, psel + b);
                }
            });
        }
        nb::dict d;
        d["visit_counts"] = visits;
        d["q_values"] = q;
        d["completed_q_values"] = cq;
        d["improved_policy"] = imp;
        d["visit_policy"] = vp;
        d["root_value"] = rv;
        d["selected_action"] = sel;
        return d;
    }

    nb::ndarray<nb::numpy, bool> advance(nb::handle actions) {
        Guard g(this);
        if (phase_ == PENDING) throw nb::value_error("advance called while a step is pending");
        In act = view_of(actions, "actions", {B_}, INTS);
        for (int b = 0; b < B_; ++b) {
            int64_t a = act.geti(b);
            if (a < 0 || a >= A_)
                throw nb::index_error(("actions[" + std::to_string(b) + "] = " + std::to_string(a) + " is out of range [0, " +
                                       std::to_string(A_) + ")").c_str());
        }
        auto kept = new_array<bool>({(size_t)B_});
        bool* pk = kept.data();
        {
            nb::gil_scoped_release rel;
            pool_.run(B_, [&](int b0, int b1) {
                for (int b = b0; b < b1; ++b) pk[b] = advance_tree(t_, b, (int)act.geti(b));
            });
        }
        phase_ = EMPTY;
        for (int b = 0; b < B_; ++b)
            if (num_nodes_[b] > 0) phase_ = ROOTS;
        return kept;
    }

    void clear() {
        Guard g(this);
        if (phase_ == PENDING) cancel_locked();
        std::fill(num_nodes_.begin(), num_nodes_.end(), 0);
        phase_ = EMPTY;
    }

    // Apply the pending softmax of every lazy node (see NODE_LAZY in arbor_tree.h).
    void materialize_probs() {
        Guard g(this);
        for (int b = 0; b < B_; ++b)
            for (int n = 0; n < num_nodes_[b]; ++n) ensure_probs(t_, b, n);
    }

    // Read-only views of internal buffers (valid while the forest lives).
    template <typename T>
    nb::object view(nb::handle self, const T* ptr, std::initializer_list<size_t> shape) {
        return nb::cast(nb::ndarray<nb::numpy, const T>(ptr, shape.size(), shape.begin(), self), nb::rv_policy::reference);
    }
    template <typename T>
    nb::object view_rw(nb::handle self, T* ptr, size_t n) {
        size_t shape[1] = {n};
        return nb::cast(nb::ndarray<nb::numpy, T>(ptr, 1, shape, self), nb::rv_policy::reference);
    }
    nb::object view_bool(nb::handle self, const bool* ptr, size_t n) {
        size_t shape[1] = {n};
        return nb::cast(nb::ndarray<nb::numpy, const bool>(ptr, 1, shape, self), nb::rv_policy::reference);
    }

    int B_, A_, N_, K_;
    Params p_;
    std::vector<int32_t> visits_, inflight_, parent_, action_;
    std::vector<uint8_t> state_, terminal_;
    std::vector<double> value_sum_, raw_value_, reward_;
    std::vector<int32_t> children_, edge_visits_, edge_inflight_;
    std::vector<double> edge_q_, pbc_table_, sqrt_table_, recip_table_;
    int64_t stat_len_ = 0;
    std::vector<double> stage_logits_, stage_reward_, stage_value_;
    std::vector<uint8_t> stage_legal_, stage_terminal_;
    std::vector<int64_t> stage_error_;
    std::vector<double> logits_, probs_;
    std::vector<uint8_t> legal_;
    std::vector<int32_t> num_nodes_, nodes_before_, sims_left_, step_leaves_, num_considered_, error_;
    std::vector<double> mm_lo_, mm_hi_;
    std::vector<uint64_t> rng_;
    std::vector<double> root_probs_, gumbel_, scratch_;
    std::vector<int32_t> leaf_node_, leaf_parent_, leaf_action_, leaf_kind_, leaf_tree_;
    std::unique_ptr<bool[]> needs_eval_, pub_eval_;
    std::vector<int32_t> pub_tree_, pub_parent_, pub_action_, pub_node_;
    std::vector<int32_t> node_map_, remap_, table_;
    TreeView t_;
    Pool pool_;
    enum Phase { EMPTY, ROOTS, SEARCHING, PENDING } phase_ = EMPTY;
    std::mutex busy_;

   private:
    // One caller at a time: a second Python thread gets an error, not a race.
    struct Guard {
        explicit Guard(Forest* f) : f_(f) {
            if (!f_->busy_.try_lock()) throw std::runtime_error("this Forest is being used by another thread");
        }
        ~Guard() { f_->busy_.unlock(); }
        Forest* f_;
    };
    void cancel_locked() {
        for (int b = 0; b < B_; ++b) cancel_tree(t_, b);
        phase_ = SEARCHING;
    }
    // mctx seq_halving.get_table_of_considered_visits(max_considered, num_simulations).
    void build_table(int num_simulations) {
        int m = p_.max_considered;
        int len = std::max(1, num_simulations);
        table_.assign((size_t)(m + 1) * len, 0);
        for (int c = 0; c <= m; ++c) {
            int32_t* row = table_.data() + (size_t)c * len;
            if (c <= 1) {
                for (int i = 0; i < len; ++i) row[i] = i;
                continue;
            }
            int log2max = (int)std::ceil(std::log2((double)c));
            std::vector<int32_t> visits(c, 0);
            int num_considered = c;
            int filled = 0;
            while (filled < num_simulations) {
                int extra = std::max(1, (int)(num_simulations / (log2max * num_considered)));
                for (int e = 0; e < extra; ++e) {
                    for (int i = 0; i < num_considered && filled < num_simulations; ++i) row[filled++] = visits[i];
                    for (int i = 0; i < num_considered; ++i) visits[i] += 1;
                }
                num_considered = std::max(2, num_considered / 2);
            }
        }
        t_.considered_table = table_.data();
        t_.table_len = len;
    }
};

}  // namespace arbor

using arbor::Forest;

void register_forest(nb::module_& m) {
    nb::exception<arbor::NodeBudgetExceeded>(m, "NodeBudgetExceeded", PyExc_RuntimeError);
    nb::class_<Forest>(m, "Forest", "B independent search trees in flat preallocated arrays (see planners.mcts).")
        .def(
            "__init__",
            [](Forest* self, int batch_size, int num_actions, int max_nodes, int leaves_per_step, int num_threads,
               const std::string& algorithm, bool two_player, double discount, double pb_c_init, double pb_c_base,
               double dirichlet_alpha, double dirichlet_fraction, nb::handle known_bounds, int max_num_considered_actions,
               double gumbel_scale, double value_scale, double maxvisit_init, double rescale_epsilon,
               const std::string& unvisited_value) {
                arbor::Params p;
                if (algorithm == "puct") p.algorithm = arbor::ALG_PUCT;
                else if (algorithm == "gumbel") p.algorithm = arbor::ALG_GUMBEL;
                else throw nb::value_error(("algorithm must be 'puct' or 'gumbel', got '" + algorithm + "'").c_str());
                p.two_player = two_player ? 1 : 0;
                p.discount = discount;
                p.pb_c_init = pb_c_init;
                p.pb_c_base = pb_c_base;
                p.dirichlet_alpha = dirichlet_alpha;
                p.dirichlet_fraction = dirichlet_fraction;
                if (!known_bounds.is_none()) {
                    auto tup = nb::cast<std::pair<double, double>>(known_bounds);
                    p.has_known_bounds = 1;
                    p.known_min = tup.first;
                    p.known_max = tup.second;
                }
                p.max_considered = max_num_considered_actions;
                p.gumbel_scale = gumbel_scale;
                p.value_scale = value_scale;
                p.maxvisit_init = maxvisit_init;
                p.rescale_epsilon = rescale_epsilon;
                if (unvisited_value == "zero") p.unvisited_parent = 0;
                else if (unvisited_value == "parent") p.unvisited_parent = 1;
                else throw nb::value_error(("unvisited_value must be 'zero' or 'parent', got '" + unvisited_value + "'").c_str());
                new (self) Forest(batch_size, num_actions, max_nodes, leaves_per_step, num_threads, p);
            },
            "batch_size"_a, "num_actions"_a, "max_nodes"_a, "leaves_per_step"_a = 1, "num_threads"_a = 1,
            "algorithm"_a = "puct", "two_player"_a = false, "discount"_a = 1.0, "pb_c_init"_a = 1.25,
            "pb_c_base"_a = 19652.0, "dirichlet_alpha"_a = 0.3, "dirichlet_fraction"_a = 0.0,
            "known_bounds"_a = nb::none(), "max_num_considered_actions"_a = 16, "gumbel_scale"_a = 1.0,
            "value_scale"_a = 0.1, "maxvisit_init"_a = 50.0, "rescale_epsilon"_a = 1e-8, "unvisited_value"_a = "zero")
        .def_ro("batch_size", &Forest::B_)
        .def_ro("num_actions", &Forest::A_)
        .def_ro("max_nodes", &Forest::N_)
        .def_ro("leaves_per_step", &Forest::K_)
        .def_prop_ro("num_threads", [](Forest& f) { return f.pool_.threads(); })
        .def("seed", &Forest::seed, "seed"_a, "Seed every tree's random stream from one integer (tree b gets its own stream).")
        .def("get_rng_state", &Forest::get_rng_state, "Per-tree random stream states (uint64[B], a copy).")
        .def("set_rng_state", &Forest::set_rng_state, "state"_a, "Restore per-tree random stream states.")
        .def("set_roots", &Forest::set_roots, "prior_logits"_a, "value"_a, "legal_mask"_a = nb::none(),
             "only_missing"_a = false)
        .def("begin", &Forest::begin, "num_simulations"_a)
        .def("select", &Forest::select)
        .def("cancel", &Forest::cancel)
        .def("expand_and_backup", &Forest::expand_and_backup, "reward"_a.none(), "value"_a.none(), "prior_logits"_a.none(),
             "legal_mask"_a.none() = nb::none(), "terminal"_a.none() = nb::none())
        .def("expand_and_select", &Forest::expand_and_select, "reward"_a.none(), "value"_a.none(),
             "prior_logits"_a.none(), "legal_mask"_a.none() = nb::none(), "terminal"_a.none() = nb::none(),
             "expand_and_backup, then select() if simulations are left; returns select()'s count or -1 when done.")
        .def("results", &Forest::results, "temperature"_a = 1.0)
        .def("advance", &Forest::advance, "actions"_a)
        .def("clear", &Forest::clear)
        .def_prop_ro("simulations_left", &Forest::simulations_left)
        .def("leaf_arrays", [](nb::handle self) {
            Forest& f = nb::cast<Forest&>(self);
            size_t M = (size_t)f.B_ * f.K_;
            return nb::make_tuple(f.view_rw(self, f.pub_tree_.data(), M), f.view_rw(self, f.pub_parent_.data(), M),
                                  f.view_rw(self, f.pub_action_.data(), M), f.view_rw(self, f.pub_node_.data(), M),
                                  f.view_rw(self, f.pub_eval_.get(), M), f.view(self, f.leaf_kind_.data(), {M}));
        })
        .def("tree_arrays", [](nb::handle self) {
            Forest& f = nb::cast<Forest&>(self);
            size_t B = f.B_, N = f.N_, A = f.A_;
            f.materialize_probs();  // lazy pUCT nodes: show probabilities, not logits
            nb::dict d;
            d["num_nodes"] = f.view(self, f.num_nodes_.data(), {B});
            d["visits"] = f.view(self, f.visits_.data(), {B, N});
            d["value_sum"] = f.view(self, f.value_sum_.data(), {B, N});
            d["raw_value"] = f.view(self, f.raw_value_.data(), {B, N});
            d["reward"] = f.view(self, f.reward_.data(), {B, N});
            d["parent"] = f.view(self, f.parent_.data(), {B, N});
            d["action"] = f.view(self, f.action_.data(), {B, N});
            d["terminal"] = f.view(self, f.terminal_.data(), {B, N});
            d["inflight"] = f.view(self, f.inflight_.data(), {B, N});
            d["children"] = f.view(self, f.children_.data(), {B, N, A});
            d["probs"] = f.view(self, f.probs_.data(), {B, N, A});
            d["root_probs"] = f.view(self, f.root_probs_.data(), {B, A});
            d["gumbel"] = f.view(self, f.gumbel_.data(), {B, A});
            d["minmax"] = nb::make_tuple(f.view(self, f.mm_lo_.data(), {B}), f.view(self, f.mm_hi_.data(), {B}));
            d["node_map"] = f.view(self, f.node_map_.data(), {B, N});
            return d;
        });
}
