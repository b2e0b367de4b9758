// Per-tree search logic of the Arbor MCTS core, written once for the CPU and
// the CUDA build.
//
// Every function here works on ONE tree `b` of a flat structure-of-arrays
// forest (TreeView): plain pointers into preallocated storage, no heap
// objects, no exceptions, no virtual calls. The CPU Forest (forest.cpp) runs
// them over trees on a thread pool; the CUDA kernels (arbor_kernels.cu) run
// them with one GPU thread per tree. ARBOR_HD marks them __host__ __device__
// under nvcc.
//
// Floating-point operations are written in a fixed order that the plain-Python
// oracle (planners/reference.py) repeats exactly, so the two agree bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define ARBOR_HD __host__ __device__
#else
#define ARBOR_HD
#endif
// x86-64 host code scores pUCT actions two at a time (see puct_argmax), or
// four at a time where the CPU has AVX2 (chosen at run time, see simd_level).
#if defined(__SSE2__) && !defined(__CUDACC__)
#define ARBOR_SSE2 1
#include <emmintrin.h>
#if defined(__GNUC__) || defined(__clang__)
#define ARBOR_AVX2 1
#include <cstdlib>
#include <cstring>
#include <immintrin.h>
#endif
#endif

namespace arbor {

enum : int32_t { ALG_PUCT = 0, ALG_GUMBEL = 1 };
enum : int32_t { LEAF_NONE = 0, LEAF_EXPAND = 1, LEAF_TERMINAL = 2, LEAF_DUPLICATE = 3 };
// NODE_LAZY: expanded, but (pUCT only) its probs row still holds the legal
// logits; ensure_probs() turns them into the softmax on the first selection
// through the node. Most leaves are never selected through, so their
// exponentials are never computed. The result is the same softmax, computed
// by the same operations, only later.
enum : uint8_t { NODE_PENDING = 0, NODE_EXPANDED = 1, NODE_LAZY = 2 };

// Search hyper-parameters (see planners/mcts.py SearchConfig for meaning).
struct Params {
    int32_t algorithm = ALG_PUCT;
    int32_t two_player = 0;  // AlphaZero mode: values flip sign along every edge
    double discount = 1.0;
    double pb_c_init = 1.25;
    double pb_c_base = 19652.0;
    double dirichlet_alpha = 0.3;
    double dirichlet_fraction = 0.0;
    int32_t has_known_bounds = 0;
    double known_min = 0.0, known_max = 0.0;
    int32_t max_considered = 16;
    double gumbel_scale = 1.0;
    double value_scale = 0.1;
    double maxvisit_init = 50.0;
    double rescale_epsilon = 1e-8;
    int32_t leaves_per_step = 1;
    // pUCT value of an unvisited child: 0 (MuZero pseudocode) or, with
    // unvisited_parent, the parent node's own value, normalised and clipped to
    // [0, 1] like EfficientZero's and LightZero's trees (mctx also starts
    // unvisited children from the parent's value).
    int32_t unvisited_parent = 0;
};

// Raw pointers into the forest's storage. Node n of tree b lives at b*N + n;
// per-(node, action) data at (b*N + n)*A + a; per-tree data at b; per-(tree,
// action) data at b*A + a; leaf slot k of tree b at b*K + k.
struct TreeView {
    int32_t B = 0, A = 0, N = 0, K = 1;
    int32_t store_logits = 1;  // keep per-edge logits (Gumbel needs them; pUCT only the probabilities)
    // per node
    int32_t* visits;
    int32_t* inflight;
    int32_t* parent;
    int32_t* action;
    uint8_t* state;
    uint8_t* terminal;
    double* value_sum;
    double* raw_value;
    double* reward;
    // per node and action
    int32_t* children;
    int32_t* edge_visits;  // visits of the child on each edge (0 if none): contiguous for selection
    double* edge_q;        // Q of each visited edge, r + g * V(child), refreshed by backup
    int32_t* edge_inflight;  // simulations pending below each edge (leaf batching only)
    double* logits;  // max-subtracted, -inf where illegal
    double* probs;   // softmax over legal actions, 0 where illegal
    uint8_t* legal;
    // per tree
    int32_t* num_nodes;
    int32_t* nodes_before_step;
    int32_t* sims_left;
    int32_t* step_leaves;
    int32_t* num_considered;
    int32_t* error;
    double* mm_lo;
    double* mm_hi;
    uint64_t* rng;
    // per tree and action
    double* root_probs;  // root priors after Dirichlet noise
    double* gumbel;      // root Gumbel noise (scaled)
    double* scratch;     // 3*A doubles per tree of work space
    // per leaf slot
    int32_t* leaf_node;
    int32_t* leaf_parent;
    int32_t* leaf_action;
    int32_t* leaf_kind;
    // sequential-halving table: (max_considered + 1) rows of table_len
    const int32_t* considered_table;
    int32_t table_len;
    // per node, used by subtree reuse: new index -> old index, old -> new
    int32_t* node_map;
    int32_t* remap;
    // lookup tables over a visit count n < stat_len: log((n + c2 + 1) / c2) + c1
    // and sqrt(n) (identical to computing them inline)
    const double* pbc_table;
    const double* sqrt_table;
    const double* recip_table;  // 1 / (n + 1)
    int32_t stat_len;
};

ARBOR_HD inline double neg_inf() { return -HUGE_VAL; }
ARBOR_HD inline double pos_inf() { return HUGE_VAL; }
// The most negative finite double. A legal action's pUCT score is never below
// it: a score that came out NaN or -inf (possible only from extreme inputs,
// e.g. a min-max range so small that 1 / range overflows) counts as this, so a
// legal action always beats an illegal one and the argmax never sees a NaN.
ARBOR_HD inline double lowest() { return -1.7976931348623157e308; }
ARBOR_HD inline double legal_score(double s) { return s > lowest() ? s : lowest(); }
ARBOR_HD inline int64_t node_at(const TreeView& t, int b, int n) { return (int64_t)b * t.N + n; }
ARBOR_HD inline int64_t row_at(const TreeView& t, int b, int n) { return node_at(t, b, n) * t.A; }
ARBOR_HD inline double edge_sign(const Params& p) { return p.two_player ? -p.discount : p.discount; }
ARBOR_HD inline double pbc_of(const TreeView& t, const Params& p, int32_t n) {
    return n < t.stat_len ? t.pbc_table[n] : log(((double)n + p.pb_c_base + 1.0) / p.pb_c_base) + p.pb_c_init;
}
ARBOR_HD inline double sqrt_of(const TreeView& t, int32_t n) { return n < t.stat_len ? t.sqrt_table[n] : sqrt((double)n); }
ARBOR_HD inline double recip_of(const TreeView& t, int32_t n) {
    return n < t.stat_len ? t.recip_table[n] : 1.0 / ((double)n + 1.0);
}


// ---------------------------------------------------------------- random streams
// splitmix64: tiny, counter-like, identical in C++, CUDA and Python.
ARBOR_HD inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
ARBOR_HD inline uint64_t next_u64(uint64_t* s) {
    *s += 0x9E3779B97F4A7C15ULL;
    return mix64(*s);
}
ARBOR_HD inline uint64_t tree_seed(uint64_t seed, uint64_t b) { return mix64(mix64(seed) + b); }
// Uniform in the open interval (0, 1).
ARBOR_HD inline double next_uniform(uint64_t* s) {
    return ((double)(next_u64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
ARBOR_HD inline double next_gumbel(uint64_t* s) { return -log(-log(next_uniform(s))); }
ARBOR_HD inline double next_normal(uint64_t* s) {
    double u1 = next_uniform(s);
    double u2 = next_uniform(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
// Marsaglia-Tsang gamma(shape, 1); shape < 1 via the u^(1/shape) boost.
ARBOR_HD inline double next_gamma(uint64_t* s, double shape) {
    double boost = 1.0;
    if (shape < 1.0) {
        boost = pow(next_uniform(s), 1.0 / shape);
        shape = shape + 1.0;
    }
    double d = shape - 1.0 / 3.0;
    double c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = next_normal(s);
        double v = 1.0 + c * x;
        if (v <= 0.0) continue;
        v = v * v * v;
        double u = next_uniform(s);
        if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v * boost;
    }
}

// ---------------------------------------------------------------- node statistics
ARBOR_HD inline double node_value(const TreeView& t, int64_t i) { return t.value_sum[i] / (double)t.visits[i]; }
// Q of the edge into node i, from the point of view of the player at its parent.
ARBOR_HD inline double edge_q(const TreeView& t, const Params& p, int64_t i) {
    return t.reward[i] + edge_sign(p) * node_value(t, i);
}
ARBOR_HD inline void minmax_update(const TreeView& t, int b, double q) {
    if (q < t.mm_lo[b]) t.mm_lo[b] = q;
    if (q > t.mm_hi[b]) t.mm_hi[b] = q;
}
// ---------------------------------------------------------------- node creation
// probs[a] / total for the legal entries of a softmax row whose illegal
// entries are already +0.0. A row with a legal entry has total >= 1 (its
// maximum contributes exp(0)), so dividing the zeros too leaves them +0.0 and
// every entry gets the bits of the legal-only loop; without the branch on
// legal[a] the compiler vectorises the divisions. A row with no legal entry
// (total 0) is left as it is, as that loop would leave it.
ARBOR_HD inline void divide_row(double* probs, double total, int A) {
    if (total == 0.0) return;
    for (int a = 0; a < A; ++a) probs[a] = probs[a] / total;
}

// Fill node n of tree b from a model output row (logits/legal are A long).
ARBOR_HD inline void init_node(const TreeView& t, int b, int n, double reward, double value, int terminal,
                               const double* logits, const uint8_t* legal) {
    const int A = t.A;
    int64_t i = node_at(t, b, n);
    int64_t r = row_at(t, b, n);
    t.reward[i] = reward;
    t.raw_value[i] = value;
    t.terminal[i] = (uint8_t)(terminal ? 1 : 0);
    t.state[i] = NODE_EXPANDED;
    // Row pointers in locals: exp() is an opaque call, after which the
    // compiler would otherwise reload every field of t.
    int32_t* children = t.children + r;
    int32_t* edge_visits = t.edge_visits + r;
    double* edge_qs = t.edge_q + r;
    double* probs = t.probs + r;
    uint8_t* legal_out = t.legal + r;
    double* logits_out = t.store_logits ? t.logits + r : nullptr;
    for (int a = 0; a < A; ++a) {
        children[a] = -1;
        edge_visits[a] = 0;
        edge_qs[a] = 0.0;
    }
    if (t.K > 1)
        for (int a = 0; a < A; ++a) t.edge_inflight[r + a] = 0;
    if (terminal) {
        for (int a = 0; a < A; ++a) {
            if (logits_out) logits_out[a] = neg_inf();
            probs[a] = 0.0;
            legal_out[a] = 0;
        }
        return;
    }
    if (logits_out) {
        double m = neg_inf();
        for (int a = 0; a < A; ++a)
            if (legal[a] && logits[a] > m) m = logits[a];
        double total = 0.0;
        for (int a = 0; a < A; ++a) {
            if (legal[a]) {
                double l = logits[a] - m;
                logits_out[a] = l;
                double e = exp(l);
                probs[a] = e;
                total += e;
            } else {
                logits_out[a] = neg_inf();
                probs[a] = 0.0;
            }
            legal_out[a] = legal[a] ? 1 : 0;
        }
        divide_row(probs, total, A);
    } else {
        // pUCT: keep the legal logits; ensure_probs() applies the softmax on first use.
        for (int a = 0; a < A; ++a) {
            probs[a] = legal[a] ? logits[a] : 0.0;
            legal_out[a] = legal[a] ? 1 : 0;
        }
        t.state[i] = NODE_LAZY;
    }
}

// Softmax over the legal entries of probs[A] in place (0 where illegal): the
// same operations, in the same order, as the eager path of init_node.
ARBOR_HD inline void softmax_row(double* probs, const uint8_t* legal, int A) {
    double m = neg_inf();
    for (int a = 0; a < A; ++a)
        if (legal[a] && probs[a] > m) m = probs[a];
    double total = 0.0;
    for (int a = 0; a < A; ++a) {
        if (legal[a]) {
            double e = exp(probs[a] - m);
            probs[a] = e;
            total += e;
        } else {
            probs[a] = 0.0;
        }
    }
    divide_row(probs, total, A);
}

// Make node n's probs row the softmax of its logits if it is still lazy.
ARBOR_HD inline void ensure_probs(const TreeView& t, int b, int n) {
    int64_t i = node_at(t, b, n);
    if (t.state[i] != NODE_LAZY) return;
    int64_t r = row_at(t, b, n);
    softmax_row(t.probs + r, t.legal + r, t.A);
    t.state[i] = NODE_EXPANDED;
}

// Make node 0 of tree b a fresh root holding the caller's root outputs. The
// root counts its own value as one visit (as mctx does).
ARBOR_HD inline void init_root(const TreeView& t, int b, double value, const double* logits, const uint8_t* legal) {
    int64_t i = node_at(t, b, 0);
    t.num_nodes[b] = 1;
    t.parent[i] = -1;
    t.action[i] = -1;
    t.visits[i] = 1;
    t.inflight[i] = 0;
    t.value_sum[i] = value;
    init_node(t, b, 0, 0.0, value, 0, logits, legal);
    ensure_probs(t, b, 0);
}

// ---------------------------------------------------------------- Gumbel pieces
// mctx qtransform_completed_by_mix_value at node n. Writes the completed but
// unscaled Q-values to cq[A] and the scaled sigma(q) to sigma[A] (either may be
// null). Illegal actions are completed with the mixed value, as in mctx.
ARBOR_HD inline void completed_q(const TreeView& t, const Params& p, int b, int n, double* cq, double* sigma) {
    const int A = t.A;
    int64_t r = row_at(t, b, n);
    int64_t sum_visits = 0;
    int32_t max_visits = 0;
    double sum_probs = 0.0;
    const double tiny = 2.2250738585072014e-308;  // finfo(float64).tiny
    for (int a = 0; a < A; ++a) {
        int32_t v = t.edge_visits[r + a];
        if (v > 0) {
            double pr = t.probs[r + a] > tiny ? t.probs[r + a] : tiny;
            sum_probs += pr;
            sum_visits += v;
            if (v > max_visits) max_visits = v;
        }
    }
    double weighted_q = 0.0;
    for (int a = 0; a < A; ++a) {
        if (t.edge_visits[r + a] > 0) {
            double pr = t.probs[r + a] > tiny ? t.probs[r + a] : tiny;
            weighted_q += pr * t.edge_q[r + a] / sum_probs;
        }
    }
    double mixed = (t.raw_value[node_at(t, b, n)] + (double)sum_visits * weighted_q) / ((double)sum_visits + 1.0);
    double lo = pos_inf(), hi = neg_inf();
    double* out = cq ? cq : t.scratch + (int64_t)b * 3 * A + 2 * A;
    for (int a = 0; a < A; ++a) {
        double q = t.edge_visits[r + a] > 0 ? t.edge_q[r + a] : mixed;
        out[a] = q;
        if (q < lo) lo = q;
        if (q > hi) hi = q;
    }
    if (!sigma) return;
    double span = hi - lo;
    if (span < p.rescale_epsilon) span = p.rescale_epsilon;
    double scale = (p.maxvisit_init + (double)max_visits) * p.value_scale;
    for (int a = 0; a < A; ++a) sigma[a] = scale * ((out[a] - lo) / span);
}

// Softmax over legal actions of logits + sigma into out[A] (0 where illegal).
ARBOR_HD inline void improved_policy(const TreeView& t, int b, int n, const double* sigma, double* out) {
    const int A = t.A;
    int64_t r = row_at(t, b, n);
    double m = neg_inf();
    for (int a = 0; a < A; ++a)
        if (t.legal[r + a]) {
            double z = t.logits[r + a] + sigma[a];
            out[a] = z;
            if (z > m) m = z;
        }
    double total = 0.0;
    for (int a = 0; a < A; ++a) {
        if (t.legal[r + a]) {
            out[a] = exp(out[a] - m);
            total += out[a];
        } else {
            out[a] = 0.0;
        }
    }
    for (int a = 0; a < A; ++a)
        if (t.legal[r + a]) out[a] = out[a] / total;
}

// Visits of edge (row r, action a) plus the in-flight simulations below it.
ARBOR_HD inline int32_t edge_visits_eff(const TreeView& t, int64_t r, int a) {
    return t.edge_visits[r + a] + t.edge_inflight[r + a];
}

// mctx score_considered + masked_argmax at the root.
ARBOR_HD inline int gumbel_root_argmax(const TreeView& t, int b, int32_t considered_visit, const double* sigma,
                                       bool use_inflight) {
    const int A = t.A;
    int64_t r = row_at(t, b, 0);
    const double* g = t.gumbel + (int64_t)b * A;
    int best = -1;
    double best_score = neg_inf();
    for (int a = 0; a < A; ++a) {
        if (!t.legal[r + a]) continue;
        int32_t v = use_inflight ? edge_visits_eff(t, r, a) : t.edge_visits[r + a];
        double s = (g[a] + t.logits[r + a]) + sigma[a];
        if (s < -1e9) s = -1e9;
        if (v != considered_visit) s = neg_inf();
        if (best < 0 || s > best_score) {
            best = a;
            best_score = s;
        }
    }
    return best;
}

ARBOR_HD inline int select_gumbel(const TreeView& t, const Params& p, int b, int n) {
    const int A = t.A;
    double* sigma = t.scratch + (int64_t)b * 3 * A;
    double* pol = sigma + A;
    completed_q(t, p, b, n, nullptr, sigma);
    int64_t r = row_at(t, b, n);
    if (n == 0) {
        int64_t sim_index = 0;
        for (int a = 0; a < A; ++a) sim_index += edge_visits_eff(t, r, a);
        if (sim_index >= t.table_len) sim_index = t.table_len - 1;
        int32_t cv = t.considered_table[(int64_t)t.num_considered[b] * t.table_len + sim_index];
        return gumbel_root_argmax(t, b, cv, sigma, true);
    }
    improved_policy(t, b, n, sigma, pol);
    int64_t total = 0;
    for (int a = 0; a < A; ++a) total += edge_visits_eff(t, r, a);
    int best = -1;
    double best_score = 0.0;
    for (int a = 0; a < A; ++a) {
        if (!t.legal[r + a]) continue;
        double s = pol[a] - (double)edge_visits_eff(t, r, a) / (1.0 + (double)total);
        if (best < 0 || s > best_score) {
            best = a;
            best_score = s;
        }
    }
    return best;
}

// ---------------------------------------------------------------- pUCT
#if defined(ARBOR_SSE2)
// The actions from `from` on, one at a time, for the vector loops below:
// writes their scores and returns the running maximum m updated with them.
template <bool VIRTUAL_LOSS>
inline double puct_tail(const int32_t* ev, const int32_t* ei, const double* eq, const double* prior,
                        const uint8_t* legal, double shift, double inv_span, double pb_sqrt, double unvisited,
                        double* score, int from, int A, double m) {
    for (int a = from; a < A; ++a) {
        double value_score = ev[a] > 0 ? (eq[a] - shift) * inv_span : unvisited;
        int32_t n = ev[a];
        if (VIRTUAL_LOSS) {
            if (ei[a] > 0) value_score = value_score * (double)ev[a] / ((double)ev[a] + (double)ei[a]);
            n += ei[a];
        }
        double s = pb_sqrt * prior[a] * (1.0 / ((double)n + 1.0)) + value_score;
        s = legal[a] ? legal_score(s) : neg_inf();
        score[a] = s;
        m = s > m ? s : m;
    }
    return m;
}

// select_puct's scores and their first argmax, two
// actions per SSE2 instruction (x86-64 only; elsewhere, and on the GPU, the
// scalar loop in select_puct runs). The same IEEE operations in the same order
// on each action give the same bits as the scalar loop: 1 / (n + 1) is the
// value recip_of's table holds, a masked lane is `unvisited` or -inf as there, and
// _mm_max_pd(s, lowest) is legal_score(s). No score is NaN, so the maximum
// over the vector is the sequential one, and the first entry equal to it is the
// scalar loop's pick. Without that loop's data-dependent branches the loads of
// many trees' rows overlap: about 10% faster at B = 256. score[] is work space
// of A doubles.
// With VIRTUAL_LOSS, ei[] are the edges' in-flight simulations and the scores
// are select_puct's virtual-loss loop's, again in its order of operations
// (1 / (n + i + 1) is recip_of(n + i)); a lane with nothing in flight computes
// 0 / 0 for the damped value and masks it out bitwise, so no NaN reaches a score.
template <bool VIRTUAL_LOSS>
inline int puct_argmax(const int32_t* ev, const int32_t* ei, const double* eq, const double* prior,
                       const uint8_t* legal, double shift, double inv_span, double pb_sqrt, double unvisited,
                       double* score, int A) {
    const __m128d vshift = _mm_set1_pd(shift), vinv = _mm_set1_pd(inv_span), vpb = _mm_set1_pd(pb_sqrt);
    const __m128d vunvisited = _mm_set1_pd(unvisited);
    const __m128d one = _mm_set1_pd(1.0), ninf = _mm_set1_pd(neg_inf()), zero = _mm_setzero_pd();
    const __m128d vlow = _mm_set1_pd(lowest());
    __m128d vmax = ninf;
    int a = 0;
    for (; a + 2 <= A; a += 2) {
        __m128d n = _mm_cvtepi32_pd(_mm_loadl_epi64((const __m128i*)(ev + a)));
        __m128d visited = _mm_mul_pd(_mm_sub_pd(_mm_loadu_pd(eq + a), vshift), vinv);
        __m128d was_visited = _mm_cmpgt_pd(n, zero);
        __m128d value_score = _mm_or_pd(_mm_and_pd(was_visited, visited), _mm_andnot_pd(was_visited, vunvisited));
        __m128d recip;
        if (VIRTUAL_LOSS) {
            // in flight: value_score * n / (n + i), the visits n + i in the prior term
            __m128d i = _mm_cvtepi32_pd(_mm_loadl_epi64((const __m128i*)(ei + a)));
            __m128d n_eff = _mm_add_pd(n, i);
            __m128d in_flight = _mm_cmpgt_pd(i, zero);
            __m128d damped = _mm_div_pd(_mm_mul_pd(value_score, n), n_eff);
            value_score = _mm_or_pd(_mm_and_pd(in_flight, damped), _mm_andnot_pd(in_flight, value_score));
            recip = _mm_div_pd(one, _mm_add_pd(n_eff, one));
        } else {
            recip = _mm_div_pd(one, _mm_add_pd(n, one));
        }
        __m128d s = _mm_add_pd(_mm_mul_pd(_mm_mul_pd(vpb, _mm_loadu_pd(prior + a)), recip), value_score);
        s = _mm_max_pd(s, vlow);
        __m128d is_legal = _mm_castsi128_pd(_mm_set_epi64x(legal[a + 1] ? -1 : 0, legal[a] ? -1 : 0));
        s = _mm_or_pd(_mm_and_pd(is_legal, s), _mm_andnot_pd(is_legal, ninf));
        _mm_storeu_pd(score + a, s);
        vmax = _mm_max_pd(s, vmax);
    }
    double m = _mm_cvtsd_f64(_mm_max_sd(vmax, _mm_unpackhi_pd(vmax, vmax)));
    m = puct_tail<VIRTUAL_LOSS>(ev, ei, eq, prior, legal, shift, inv_span, pb_sqrt, unvisited, score, a, A, m);
    for (a = 0; a < A; ++a)
        if (score[a] == m) return a;
    return 0;
}
#endif

#if defined(ARBOR_AVX2)
// puct_argmax four actions per AVX2 instruction: the same IEEE operations on
// each action as the SSE2 version and the scalar loop (blendv selects where
// those mask with and/andnot; max_pd keeps their NaN rule), so the same bits
// and the same pick. Compiled for AVX2 only here and called only when the CPU
// has it (simd_level), so the module still runs on any x86-64.
template <bool VIRTUAL_LOSS>
__attribute__((target("avx2"))) int puct_argmax_avx2(const int32_t* ev, const int32_t* ei, const double* eq,
                                                      const double* prior, const uint8_t* legal, double shift,
                                                      double inv_span, double pb_sqrt, double unvisited,
                                                      double* score, int A) {
    const __m256d vshift = _mm256_set1_pd(shift), vinv = _mm256_set1_pd(inv_span), vpb = _mm256_set1_pd(pb_sqrt);
    const __m256d vunvisited = _mm256_set1_pd(unvisited);
    const __m256d one = _mm256_set1_pd(1.0), ninf = _mm256_set1_pd(neg_inf()), zero = _mm256_setzero_pd();
    const __m256d vlow = _mm256_set1_pd(lowest());
    const __m256i izero = _mm256_setzero_si256();
    __m256d vmax = ninf;
    int a = 0;
    for (; a + 4 <= A; a += 4) {
        __m256d n = _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i*)(ev + a)));
        __m256d visited = _mm256_mul_pd(_mm256_sub_pd(_mm256_loadu_pd(eq + a), vshift), vinv);
        __m256d was_visited = _mm256_cmp_pd(n, zero, _CMP_GT_OQ);
        __m256d value_score = _mm256_blendv_pd(vunvisited, visited, was_visited);
        __m256d recip;
        if (VIRTUAL_LOSS) {
            __m256d i = _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i*)(ei + a)));
            __m256d n_eff = _mm256_add_pd(n, i);
            __m256d in_flight = _mm256_cmp_pd(i, zero, _CMP_GT_OQ);
            __m256d damped = _mm256_div_pd(_mm256_mul_pd(value_score, n), n_eff);
            value_score = _mm256_blendv_pd(value_score, damped, in_flight);
            recip = _mm256_div_pd(one, _mm256_add_pd(n_eff, one));
        } else {
            recip = _mm256_div_pd(one, _mm256_add_pd(n, one));
        }
        __m256d s = _mm256_add_pd(_mm256_mul_pd(_mm256_mul_pd(vpb, _mm256_loadu_pd(prior + a)), recip), value_score);
        s = _mm256_max_pd(s, vlow);
        int32_t bytes;
        std::memcpy(&bytes, legal + a, 4);
        __m256d is_legal =
            _mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_cvtepu8_epi64(_mm_cvtsi32_si128(bytes)), izero));
        s = _mm256_blendv_pd(ninf, s, is_legal);
        _mm256_storeu_pd(score + a, s);
        vmax = _mm256_max_pd(s, vmax);
    }
    __m128d half = _mm_max_pd(_mm256_castpd256_pd128(vmax), _mm256_extractf128_pd(vmax, 1));
    double m = _mm_cvtsd_f64(_mm_max_sd(half, _mm_unpackhi_pd(half, half)));
    const int vec_end = a;
    m = puct_tail<VIRTUAL_LOSS>(ev, ei, eq, prior, legal, shift, inv_span, pb_sqrt, unvisited, score, a, A, m);
    const __m256d vm = _mm256_set1_pd(m);
    for (a = 0; a < vec_end; a += 4) {
        int hits = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(score + a), vm, _CMP_EQ_OQ));
        if (hits) return a + __builtin_ctz((unsigned)hits);
    }
    for (; a < A; ++a)
        if (score[a] == m) return a;
    return 0;
}

// Which vector path the CPU core takes: 2 with AVX2, else 1 (SSE2). Read
// once when the module loads; ARBOR_SIMD=sse2 in the environment forces the
// SSE2 path (the tests compare the two).
inline int detect_simd_level() {
    const char* forced = std::getenv("ARBOR_SIMD");
    if (forced && std::strcmp(forced, "sse2") == 0) return 1;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 2 : 1;
}
inline const int simd_level = detect_simd_level();
#endif

#if defined(ARBOR_SSE2)
// puct_argmax on the widest vector path this CPU has (the same result on each).
template <bool VIRTUAL_LOSS>
inline int puct_argmax_simd(const int32_t* ev, const int32_t* ei, const double* eq, const double* prior,
                            const uint8_t* legal, double shift, double inv_span, double pb_sqrt, double unvisited,
                            double* score, int A) {
#if defined(ARBOR_AVX2)
    if (simd_level >= 2)
        return puct_argmax_avx2<VIRTUAL_LOSS>(ev, ei, eq, prior, legal, shift, inv_span, pb_sqrt, unvisited, score, A);
#endif
    return puct_argmax<VIRTUAL_LOSS>(ev, ei, eq, prior, legal, shift, inv_span, pb_sqrt, unvisited, score, A);
}
#endif

// pUCT at node n, MuZero pseudocode with tree-wide min-max normalisation:
//   score(a) = (pb_c(N) * sqrt(N)) * P(a) * (1 / (n(a) + 1)) + normalised Q(a)
// (if unvisited: 0, or with unvisited_parent the node's value V(n) normalised
// and clipped to [0, 1]; raw V(n) before the min-max range opens)
// with N the node's visits, pb_c(N) = log((N + c2 + 1) / c2) + c1. Returns the
// first legal argmax (a NaN or -inf score counts as lowest(), see there). With
// leaf batching, in-flight simulations count as visits with normalised value 0
// (virtual loss).
ARBOR_HD inline int select_puct(const TreeView& t, const Params& p, int b, int n) {
    const int A = t.A;
    int64_t i = node_at(t, b, n);
    int64_t r = row_at(t, b, n);
    if (n != 0) ensure_probs(t, b, n);
    int32_t parent_visits = t.visits[i] + t.inflight[i];
    const double pb_sqrt = pbc_of(t, p, parent_visits) * sqrt_of(t, parent_visits);
    const double* prior = n == 0 ? t.root_probs + (int64_t)b * A : t.probs + r;
    const int32_t* ev = t.edge_visits + r;
    const double* eq = t.edge_q + r;
    const uint8_t* legal = t.legal + r;
    const double lo = t.mm_lo[b], hi = t.mm_hi[b];
    const bool scaled = hi > lo;
    const double shift = scaled ? lo : 0.0;  // (q - 0) * 1 == q: no normalisation before the range opens
    const double inv_span = scaled ? 1.0 / (hi - lo) : 1.0;
    double unvisited = 0.0;
    if (p.unvisited_parent) {
        unvisited = t.value_sum[i] / (double)t.visits[i];
        if (scaled) {
            unvisited = (unvisited - shift) * inv_span;
            unvisited = unvisited < 0.0 ? 0.0 : (unvisited > 1.0 ? 1.0 : unvisited);
        }
    }
    // The scalar loops take the scores and the first-legal argmax in one pass
    // (no scratch stores): the same operations in the same order as writing
    // score[a] and scanning it.
    int best = 0;
    [[maybe_unused]] double best_score = neg_inf();  // used by the scalar loops only
    // A node with no simulation in flight through it has none on its edges
    // either (add_inflight counts the node whenever it counts one of its
    // edges), so its scores are the plain ones: only the nodes on this step's
    // earlier paths take the virtual-loss loop.
    if (t.K > 1 && t.inflight[i] > 0) {
        const int32_t* ei = t.edge_inflight + r;
#if defined(ARBOR_SSE2)
        best = puct_argmax_simd<true>(ev, ei, eq, prior, legal, shift, inv_span, pb_sqrt, unvisited,
                                      t.scratch + (int64_t)b * 3 * A, A);
#else
        for (int a = 0; a < A; ++a) {
            double value_score = ev[a] > 0 ? (eq[a] - shift) * inv_span : unvisited;
            if (ei[a] > 0) value_score = value_score * (double)ev[a] / ((double)ev[a] + (double)ei[a]);
            double s = pb_sqrt * prior[a] * recip_of(t, ev[a] + ei[a]) + value_score;
            s = legal[a] ? legal_score(s) : neg_inf();
            bool better = a == 0 || s > best_score;
            best = better ? a : best;
            best_score = better ? s : best_score;
        }
#endif
    } else {
#if defined(ARBOR_SSE2)
        best = puct_argmax_simd<false>(ev, nullptr, eq, prior, legal, shift, inv_span, pb_sqrt, unvisited,
                                      t.scratch + (int64_t)b * 3 * A, A);
#else
        for (int a = 0; a < A; ++a) {
            double value_score = ev[a] > 0 ? (eq[a] - shift) * inv_span : unvisited;
            double s = pb_sqrt * prior[a] * recip_of(t, ev[a]) + value_score;
            s = legal[a] ? legal_score(s) : neg_inf();
            bool better = a == 0 || s > best_score;
            best = better ? a : best;
            best_score = better ? s : best_score;
        }
#endif
    }
    return best;
}

ARBOR_HD inline int select_action(const TreeView& t, const Params& p, int b, int n) {
    return p.algorithm == ALG_GUMBEL ? select_gumbel(t, p, b, n) : select_puct(t, p, b, n);
}

// Add delta in-flight simulations on the path from node `leaf` up to the root
// (node and edge counters).
ARBOR_HD inline void add_inflight(const TreeView& t, int b, int leaf, int32_t delta) {
    int x = leaf;
    while (x > 0) {
        int64_t i = node_at(t, b, x);
        t.inflight[i] += delta;
        t.edge_inflight[row_at(t, b, t.parent[i]) + t.action[i]] += delta;
        x = t.parent[i];
    }
    if (x == 0) t.inflight[node_at(t, b, 0)] += delta;
}

// ---------------------------------------------------------------- one step
// Start a search on tree b: Dirichlet noise and Gumbel draws at the root, the
// min-max statistics rebuilt from the (possibly reused) tree.
ARBOR_HD inline void begin_tree(const TreeView& t, const Params& p, int b, int num_simulations) {
    const int A = t.A;
    t.sims_left[b] = num_simulations;
    t.error[b] = 0;
    t.step_leaves[b] = 0;
    t.mm_lo[b] = p.has_known_bounds ? p.known_min : pos_inf();
    t.mm_hi[b] = p.has_known_bounds ? p.known_max : neg_inf();
    for (int n = 1; n < t.num_nodes[b]; ++n) {
        int64_t i = node_at(t, b, n);
        if (t.visits[i] > 0) minmax_update(t, b, edge_q(t, p, i));
    }
    ensure_probs(t, b, 0);  // a root kept by advance() may still be lazy
    int64_t r = row_at(t, b, 0);
    double* rp = t.root_probs + (int64_t)b * A;
    int num_legal = 0;
    for (int a = 0; a < A; ++a) {
        rp[a] = t.probs[r + a];
        num_legal += t.legal[r + a] ? 1 : 0;
    }
    uint64_t* s = t.rng + b;
    if (p.algorithm == ALG_PUCT && p.dirichlet_fraction > 0.0) {
        double* noise = t.scratch + (int64_t)b * 3 * A;
        double total = 0.0;
        for (int a = 0; a < A; ++a) {
            noise[a] = 0.0;
            if (t.legal[r + a]) {
                noise[a] = next_gamma(s, p.dirichlet_alpha);
                total += noise[a];
            }
        }
        for (int a = 0; a < A; ++a) {
            if (!t.legal[r + a]) continue;
            double eta = total > 0.0 ? noise[a] / total : 1.0 / (double)num_legal;
            rp[a] = rp[a] * (1.0 - p.dirichlet_fraction) + eta * p.dirichlet_fraction;
        }
    }
    if (p.algorithm == ALG_GUMBEL) {
        double* g = t.gumbel + (int64_t)b * A;
        for (int a = 0; a < A; ++a) g[a] = p.gumbel_scale * next_gumbel(s);
        t.num_considered[b] = num_legal < p.max_considered ? num_legal : p.max_considered;
    }
}

// Descend from the root up to K times, recording leaves and adding in-flight
// visits along each path. Sets error[b] = 1 (and stops) if the node budget is
// exhausted; the caller then cancels the step.
ARBOR_HD inline void select_tree(const TreeView& t, const Params& p, int b) {
    const int K = t.K;
    t.nodes_before_step[b] = t.num_nodes[b];
    int count = t.sims_left[b] < K ? t.sims_left[b] : K;
    t.step_leaves[b] = 0;
    for (int k = 0; k < K; ++k) {
        int64_t slot = (int64_t)b * K + k;
        t.leaf_kind[slot] = LEAF_NONE;
        t.leaf_node[slot] = -1;
        t.leaf_parent[slot] = -1;
        t.leaf_action[slot] = -1;
    }
    for (int k = 0; k < count; ++k) {
        int64_t slot = (int64_t)b * K + k;
        int n = 0;
        int kind = LEAF_NONE, leaf = -1, par = -1, act = -1;
        for (;;) {
            int64_t i = node_at(t, b, n);
            if (t.terminal[i]) {
                kind = LEAF_TERMINAL;
                leaf = n;
                par = t.parent[i];
                act = t.action[i];
                break;
            }
            int a = select_action(t, p, b, n);
            int32_t c = t.children[row_at(t, b, n) + a];
            if (c < 0) {
                if (t.num_nodes[b] >= t.N) {
                    t.error[b] = 1;
                    return;
                }
                int nn = t.num_nodes[b]++;
                int64_t j = node_at(t, b, nn);
                t.visits[j] = 0;
                t.inflight[j] = 0;
                t.value_sum[j] = 0.0;
                t.raw_value[j] = 0.0;
                t.reward[j] = 0.0;
                t.parent[j] = n;
                t.action[j] = a;
                t.state[j] = NODE_PENDING;
                t.terminal[j] = 0;
                t.children[row_at(t, b, n) + a] = nn;
                kind = LEAF_EXPAND;
                leaf = nn;
                par = n;
                act = a;
                break;
            }
            if (t.state[node_at(t, b, c)] == NODE_PENDING) {
                kind = LEAF_DUPLICATE;
                leaf = c;
                par = n;
                act = a;
                break;
            }
            n = c;
        }
        t.leaf_kind[slot] = kind;
        t.leaf_node[slot] = leaf;
        t.leaf_parent[slot] = par;
        t.leaf_action[slot] = act;
        if (K > 1) add_inflight(t, b, leaf, 1);  // only matters when a tree takes several leaves per step
        t.step_leaves[b] = k + 1;
        t.sims_left[b] -= 1;
    }
}

// Undo select_tree on tree b (used when another tree ran out of nodes or the
// caller aborts a step).
ARBOR_HD inline void cancel_tree(const TreeView& t, int b) {
    const int K = t.K;
    for (int k = t.step_leaves[b] - 1; k >= 0; --k) {
        int64_t slot = (int64_t)b * K + k;
        int leaf = t.leaf_node[slot];
        if (K > 1) add_inflight(t, b, leaf, -1);
        if (t.leaf_kind[slot] == LEAF_EXPAND) t.children[row_at(t, b, t.leaf_parent[slot]) + t.leaf_action[slot]] = -1;
        t.leaf_kind[slot] = LEAF_NONE;
    }
    t.sims_left[b] += t.step_leaves[b];
    t.step_leaves[b] = 0;
    t.num_nodes[b] = t.nodes_before_step[b];
    t.error[b] = 0;
}

// Back the value of leaf slot k of tree b up to the root (the leaf itself has
// been initialised by init_node when it needed an evaluation).
ARBOR_HD inline void backup_leaf(const TreeView& t, const Params& p, int b, int k) {
    int64_t slot = (int64_t)b * t.K + k;
    if (t.leaf_kind[slot] == LEAF_NONE) return;
    // Tree b's rows, the sizes and the min-max range in locals: the int32 and
    // double stores below could alias t's fields and mm_lo/mm_hi, and the
    // compiler would reload them on every level. The same operations in the
    // same order as updating them in place.
    const int64_t N = t.N, A = t.A;
    int32_t* visits = t.visits + (int64_t)b * N;
    int32_t* inflight = t.inflight + (int64_t)b * N;
    const int32_t* parent = t.parent + (int64_t)b * N;
    const int32_t* action = t.action + (int64_t)b * N;
    double* value_sum = t.value_sum + (int64_t)b * N;
    const double* reward = t.reward + (int64_t)b * N;
    double* edge_qs = t.edge_q + (int64_t)b * N * A;
    int32_t* edge_visits = t.edge_visits + (int64_t)b * N * A;
    int32_t* edge_inflight = t.edge_inflight + (int64_t)b * N * A;
    const bool batched = t.K > 1;  // in-flight counts exist only with several leaves per step
    double lo = t.mm_lo[b], hi = t.mm_hi[b];
    int n = t.leaf_node[slot];
    double g = t.raw_value[(int64_t)b * N + n];
    visits[n] += 1;
    value_sum[n] += g;
    if (batched) inflight[n] -= 1;
    const double sign = edge_sign(p);
    while (n != 0) {
        double q = reward[n] + sign * (value_sum[n] / (double)visits[n]);
        if (q < lo) lo = q;  // minmax_update
        if (q > hi) hi = q;
        const int par = parent[n];
        int64_t e = (int64_t)par * A + action[n];
        edge_qs[e] = q;
        edge_visits[e] = visits[n];
        if (batched) edge_inflight[e] -= 1;
        g = reward[n] + sign * g;
        n = par;
        visits[n] += 1;
        value_sum[n] += g;
        if (batched) inflight[n] -= 1;
    }
    t.mm_lo[b] = lo;
    t.mm_hi[b] = hi;
    t.leaf_kind[slot] = LEAF_NONE;
}

ARBOR_HD inline void backup_tree(const TreeView& t, const Params& p, int b) {
    for (int k = 0; k < t.step_leaves[b]; ++k) backup_leaf(t, p, b, k);
    t.step_leaves[b] = 0;
}

// ---------------------------------------------------------------- results
// Root summary of tree b. Every output pointer addresses A (or 1) values.
ARBOR_HD inline void root_summary(const TreeView& t, const Params& p, int b, double temperature, int32_t* visit_counts,
                                  double* q_values, double* completed, double* improved, double* visit_policy,
                                  double* root_value, int32_t* selected) {
    const int A = t.A;
    int64_t r = row_at(t, b, 0);
    int64_t root = node_at(t, b, 0);
    int32_t max_visits = 0;
    int64_t total = 0;
    for (int a = 0; a < A; ++a) {
        int32_t v = t.edge_visits[r + a];
        visit_counts[a] = v;
        q_values[a] = v > 0 ? t.edge_q[r + a] : 0.0;
        total += v;
        if (v > max_visits) max_visits = v;
    }
    *root_value = node_value(t, root);
    double* sigma = t.scratch + (int64_t)b * 3 * A;
    completed_q(t, p, b, 0, completed, sigma);
    // visit-count policy with temperature
    int first_best = -1;
    for (int a = 0; a < A; ++a)
        if (t.legal[r + a] && (first_best < 0 || visit_counts[a] > visit_counts[first_best])) first_best = a;
    if (total == 0) {
        for (int a = 0; a < A; ++a) visit_policy[a] = t.root_probs[(int64_t)b * A + a];
    } else if (temperature <= 0.0) {
        for (int a = 0; a < A; ++a) visit_policy[a] = a == first_best ? 1.0 : 0.0;
    } else {
        double z = 0.0;
        for (int a = 0; a < A; ++a) {
            visit_policy[a] = pow((double)visit_counts[a] / (double)max_visits, 1.0 / temperature);
            z += visit_policy[a];
        }
        for (int a = 0; a < A; ++a) visit_policy[a] = visit_policy[a] / z;
    }
    if (p.algorithm == ALG_GUMBEL) {
        improved_policy(t, b, 0, sigma, improved);
        *selected = gumbel_root_argmax(t, b, max_visits, sigma, false);
    } else {
        for (int a = 0; a < A; ++a)
            improved[a] = total > 0 ? (double)visit_counts[a] / (double)total : t.root_probs[(int64_t)b * A + a];
        if (temperature <= 0.0 || total == 0) {
            *selected = first_best;
        } else {
            double u = next_uniform(t.rng + b);
            double acc = 0.0;
            int pick = -1;
            for (int a = 0; a < A; ++a) {
                if (!t.legal[r + a] || visit_policy[a] <= 0.0) continue;
                acc += visit_policy[a];
                pick = a;
                if (u < acc) break;
            }
            *selected = pick;
        }
    }
}

// ---------------------------------------------------------------- subtree reuse
// Make the child reached by `act` the new root of tree b, compacting its
// subtree to the front of the storage. node_map[new] = old index (-1 past the
// end). Returns false (and empties the tree) when that child is missing,
// pending or terminal; the caller must then give the tree a fresh root.
ARBOR_HD inline bool advance_tree(const TreeView& t, int b, int act) {
    const int A = t.A;
    int32_t* nm = t.node_map + (int64_t)b * t.N;
    int32_t* remap = t.remap + (int64_t)b * t.N;
    for (int n = 0; n < t.N; ++n) nm[n] = -1;
    int32_t c = (t.num_nodes[b] > 0 && act >= 0 && act < A) ? t.children[row_at(t, b, 0) + act] : -1;
    if (c < 0 || t.state[node_at(t, b, c)] == NODE_PENDING || t.terminal[node_at(t, b, c)]) {
        t.num_nodes[b] = 0;
        return false;
    }
    // Children always have larger indices than their parents, so a scan in
    // index order finds the subtree and every node moves to a lower (or equal)
    // index: the compaction can run in place.
    int count = 0;
    for (int n = 0; n < t.num_nodes[b]; ++n) {
        remap[n] = -1;
        if (n == c || (n > c && remap[t.parent[node_at(t, b, n)]] >= 0)) remap[n] = count++;
    }
    for (int n = c; n < t.num_nodes[b]; ++n) {
        int m = remap[n];
        if (m < 0) continue;
        nm[m] = n;
        int64_t src = node_at(t, b, n), dst = node_at(t, b, m);
        t.visits[dst] = t.visits[src];
        t.inflight[dst] = 0;
        t.value_sum[dst] = t.value_sum[src];
        t.raw_value[dst] = t.raw_value[src];
        t.reward[dst] = m == 0 ? 0.0 : t.reward[src];
        t.state[dst] = t.state[src];
        t.terminal[dst] = t.terminal[src];
        t.parent[dst] = m == 0 ? -1 : remap[t.parent[src]];
        t.action[dst] = m == 0 ? -1 : t.action[src];
        int64_t rs = row_at(t, b, n), rd = row_at(t, b, m);
        for (int a = 0; a < A; ++a) {
            int32_t ch = t.children[rs + a];
            t.children[rd + a] = ch >= 0 ? remap[ch] : -1;
            t.edge_visits[rd + a] = t.edge_visits[rs + a];
            t.edge_q[rd + a] = t.edge_q[rs + a];
            t.edge_inflight[rd + a] = 0;
            t.logits[rd + a] = t.logits[rs + a];
            t.probs[rd + a] = t.probs[rs + a];
            t.legal[rd + a] = t.legal[rs + a];
        }
    }
    t.num_nodes[b] = count;
    return true;
}

}  // namespace arbor
