// CUDA kernels of the Arbor search core: one GPU thread per tree, running the
// very functions the CPU forest runs (csrc/arbor_tree.h, ARBOR_HD).
//
// Built only when CMake is configured with -DARBOR_CUDA=ON and finds a CUDA
// toolchain. The arrays of a TreeView must then point to device memory (see
// DeviceForest). Compile-only check:
//     nvcc -std=c++17 -Icsrc -c csrc/arbor_kernels.cu -o /tmp/arbor_kernels.o
// Self test on a machine with a GPU (CPU and GPU run the same search):
//     nvcc -std=c++17 --fmad=false -DARBOR_CUDA_SELFTEST -Icsrc csrc/arbor_kernels.cu -o /tmp/arbor_selftest
//     /tmp/arbor_selftest
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "arbor_tree.h"

namespace arbor {
namespace cuda {

__global__ void begin_kernel(TreeView t, Params p, int num_simulations) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < t.B) begin_tree(t, p, b, num_simulations);
}

__global__ void select_kernel(TreeView t, Params p) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < t.B) select_tree(t, p, b);
}

__global__ void cancel_kernel(TreeView t) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < t.B) cancel_tree(t, b);
}

// Model outputs for the M = B*K leaf slots, row-major float32 (as a network on
// the GPU produces them); legal/terminal may be null (all legal / none).
__global__ void expand_backup_kernel(TreeView t, Params p, const float* reward, const float* value, const float* logits,
                                     const uint8_t* legal, const uint8_t* terminal) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= t.B) return;
    const int A = t.A;
    double* row = t.scratch + (int64_t)b * 3 * A;  // init_node does not use the scratch space itself
    uint8_t all_legal[1] = {1};
    for (int k = 0; k < t.step_leaves[b]; ++k) {
        int64_t m = (int64_t)b * t.K + k;
        if (t.leaf_kind[m] == LEAF_EXPAND) {
            int term = terminal ? terminal[m] : 0;
            for (int a = 0; a < A; ++a) row[a] = (double)logits[m * A + a];
            if (legal) {
                init_node(t, b, t.leaf_node[m], (double)reward[m], (double)value[m], term, row, legal + m * A);
            } else {
                // all legal: expand a mask of ones in the second scratch row
                uint8_t* ones = reinterpret_cast<uint8_t*>(row + A);
                for (int a = 0; a < A; ++a) ones[a] = all_legal[0];
                init_node(t, b, t.leaf_node[m], (double)reward[m], (double)value[m], term, row, ones);
            }
        }
        backup_leaf(t, p, b, k);
    }
    t.step_leaves[b] = 0;
}

inline int blocks_for(int n, int threads) { return (n + threads - 1) / threads; }

// Launchers (asynchronous on `stream`).
cudaError_t launch_begin(const TreeView& t, const Params& p, int num_simulations, cudaStream_t stream) {
    begin_kernel<<<blocks_for(t.B, 128), 128, 0, stream>>>(t, p, num_simulations);
    return cudaGetLastError();
}
cudaError_t launch_select(const TreeView& t, const Params& p, cudaStream_t stream) {
    select_kernel<<<blocks_for(t.B, 128), 128, 0, stream>>>(t, p);
    return cudaGetLastError();
}
cudaError_t launch_cancel(const TreeView& t, cudaStream_t stream) {
    cancel_kernel<<<blocks_for(t.B, 128), 128, 0, stream>>>(t);
    return cudaGetLastError();
}
cudaError_t launch_expand_backup(const TreeView& t, const Params& p, const float* reward, const float* value,
                                 const float* logits, const uint8_t* legal, const uint8_t* terminal,
                                 cudaStream_t stream) {
    expand_backup_kernel<<<blocks_for(t.B, 128), 128, 0, stream>>>(t, p, reward, value, logits, legal, terminal);
    return cudaGetLastError();
}

// Device storage for B trees: the same layout as the CPU Forest, in cudaMalloc'd
// buffers (one allocation per array, made once).
struct DeviceForest {
    TreeView view;
    std::vector<void*> buffers;

    template <typename T>
    T* alloc(size_t n) {
        void* ptr = nullptr;
        if (cudaMalloc(&ptr, sizeof(T) * (n ? n : 1)) != cudaSuccess) return nullptr;
        cudaMemset(ptr, 0, sizeof(T) * (n ? n : 1));
        buffers.push_back(ptr);
        return static_cast<T*>(ptr);
    }

    // host_table: sequential-halving table; pbc/sqrt: stat_len lookups (see TreeView).
    bool allocate(int B, int A, int N, int K, const int32_t* host_table, int table_rows, int table_len,
                  const double* host_pbc, const double* host_sqrt, const double* host_recip, int stat_len) {
        TreeView& t = view;
        t.B = B; t.A = A; t.N = N; t.K = K;
        size_t nodes = (size_t)B * N, edges = nodes * A, ta = (size_t)B * A, leaves = (size_t)B * K;
        t.visits = alloc<int32_t>(nodes); t.inflight = alloc<int32_t>(nodes); t.parent = alloc<int32_t>(nodes);
        t.action = alloc<int32_t>(nodes); t.state = alloc<uint8_t>(nodes); t.terminal = alloc<uint8_t>(nodes);
        t.value_sum = alloc<double>(nodes); t.raw_value = alloc<double>(nodes); t.reward = alloc<double>(nodes);
        t.children = alloc<int32_t>(edges); t.edge_visits = alloc<int32_t>(edges); t.edge_q = alloc<double>(edges);
        t.edge_inflight = alloc<int32_t>(edges);
        t.logits = alloc<double>(edges); t.probs = alloc<double>(edges);
        t.legal = alloc<uint8_t>(edges);
        t.num_nodes = alloc<int32_t>(B); t.nodes_before_step = alloc<int32_t>(B); t.sims_left = alloc<int32_t>(B);
        t.step_leaves = alloc<int32_t>(B); t.num_considered = alloc<int32_t>(B); t.error = alloc<int32_t>(B);
        t.mm_lo = alloc<double>(B); t.mm_hi = alloc<double>(B); t.rng = alloc<uint64_t>(B);
        t.root_probs = alloc<double>(ta); t.gumbel = alloc<double>(ta); t.scratch = alloc<double>(ta * 3);
        t.leaf_node = alloc<int32_t>(leaves); t.leaf_parent = alloc<int32_t>(leaves);
        t.leaf_action = alloc<int32_t>(leaves); t.leaf_kind = alloc<int32_t>(leaves);
        t.node_map = alloc<int32_t>(nodes); t.remap = alloc<int32_t>(nodes);
        int32_t* table = alloc<int32_t>((size_t)table_rows * table_len);
        if (table && host_table)
            cudaMemcpy(table, host_table, sizeof(int32_t) * table_rows * table_len, cudaMemcpyHostToDevice);
        t.considered_table = table;
        t.table_len = table_len;
        double* pbc = alloc<double>(stat_len);
        double* sq = alloc<double>(stat_len);
        double* rc = alloc<double>(stat_len);
        if (pbc && sq && rc) {
            cudaMemcpy(pbc, host_pbc, sizeof(double) * stat_len, cudaMemcpyHostToDevice);
            cudaMemcpy(sq, host_sqrt, sizeof(double) * stat_len, cudaMemcpyHostToDevice);
            cudaMemcpy(rc, host_recip, sizeof(double) * stat_len, cudaMemcpyHostToDevice);
        }
        t.pbc_table = pbc;
        t.sqrt_table = sq;
        t.recip_table = rc;
        t.stat_len = stat_len;
        for (void* b : buffers)
            if (!b) return false;
        return buffers.size() == 39;
    }
    ~DeviceForest() {
        for (void* b : buffers) cudaFree(b);
    }
};

}  // namespace cuda
}  // namespace arbor

#ifdef ARBOR_CUDA_SELFTEST
// Runs one pUCT and one Gumbel search on B trees with a hash-defined model, on
// the CPU (host copies of the same functions) and on the GPU, and compares.
using namespace arbor;

ARBOR_HD inline double hash_unit(uint64_t key) { return (double)(mix64(key) >> 11) * (1.0 / 9007199254740992.0); }

struct HostForest {
    TreeView t;
    std::vector<int32_t> i32[18];
    std::vector<uint8_t> u8[4];
    std::vector<double> f64[14];
    std::vector<uint64_t> rng;
};

static void host_alloc(HostForest& h, int B, int A, int N, int K, const std::vector<int32_t>& table, int len,
                       const Params& p, int stat_len) {
    size_t nodes = (size_t)B * N, edges = nodes * A, ta = (size_t)B * A, leaves = (size_t)B * K;
    TreeView& t = h.t;
    t.B = B; t.A = A; t.N = N; t.K = K;
    auto I = [&](int i, size_t n) { h.i32[i].assign(n, 0); return h.i32[i].data(); };
    auto U = [&](int i, size_t n) { h.u8[i].assign(n, 0); return h.u8[i].data(); };
    auto F = [&](int i, size_t n) { h.f64[i].assign(n, 0.0); return h.f64[i].data(); };
    t.visits = I(0, nodes); t.inflight = I(1, nodes); t.parent = I(2, nodes); t.action = I(3, nodes);
    t.state = U(0, nodes); t.terminal = U(1, nodes); t.legal = U(2, edges);
    t.value_sum = F(0, nodes); t.raw_value = F(1, nodes); t.reward = F(2, nodes);
    t.children = I(4, edges); t.logits = F(3, edges); t.probs = F(4, edges);
    t.edge_visits = I(16, edges); t.edge_q = F(10, edges); t.edge_inflight = I(17, edges);
    t.num_nodes = I(5, B); t.nodes_before_step = I(6, B); t.sims_left = I(7, B); t.step_leaves = I(8, B);
    t.num_considered = I(9, B); t.error = I(10, B); t.mm_lo = F(5, B); t.mm_hi = F(6, B);
    h.rng.assign(B, 0); t.rng = h.rng.data();
    t.root_probs = F(7, ta); t.gumbel = F(8, ta); t.scratch = F(9, ta * 3);
    t.leaf_node = I(11, leaves); t.leaf_parent = I(12, leaves); t.leaf_action = I(13, leaves); t.leaf_kind = I(14, leaves);
    t.node_map = I(15, nodes); t.remap = I(15, nodes);  // unused by the self test
    t.considered_table = table.data(); t.table_len = len;
    double* pbc = F(11, stat_len);
    double* sq = F(12, stat_len);
    double* rc = F(13, stat_len);
    for (int n = 0; n < stat_len; ++n) {
        pbc[n] = log(((double)n + p.pb_c_base + 1.0) / p.pb_c_base) + p.pb_c_init;
        sq[n] = sqrt((double)n);
        rc[n] = 1.0 / ((double)n + 1.0);
    }
    t.pbc_table = pbc; t.sqrt_table = sq; t.recip_table = rc; t.stat_len = stat_len;
}

// The toy model: outputs of slot m are a hash of (tree, node id).
ARBOR_HD inline void toy_outputs(const TreeView& t, int64_t m, float* reward, float* value, float* logits) {
    uint64_t key = ((uint64_t)(m / t.K) << 32) ^ (uint64_t)(t.leaf_node[m] + 1);
    reward[m] = (float)(hash_unit(key * 3 + 1) - 0.5);
    value[m] = (float)(2.0 * hash_unit(key * 3 + 2) - 1.0);
    for (int a = 0; a < t.A; ++a) logits[m * t.A + a] = (float)(4.0 * hash_unit(key * 131 + a) - 2.0);
}

__global__ void toy_model_kernel(TreeView t, float* reward, float* value, float* logits) {
    int64_t m = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (m < (int64_t)t.B * t.K && t.leaf_kind[m] == LEAF_EXPAND) toy_outputs(t, m, reward, value, logits);
}

__global__ void roots_kernel(TreeView t, const float* logits) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= t.B) return;
    double* row = t.scratch + (int64_t)b * 3 * t.A;
    uint8_t* ones = reinterpret_cast<uint8_t*>(row + t.A);
    for (int a = 0; a < t.A; ++a) { row[a] = logits[b * t.A + a]; ones[a] = 1; }
    t.rng[b] = tree_seed(7, (uint64_t)b);
    init_root(t, b, 0.0, row, ones);
}

static int run_selftest(int algorithm) {
    const int B = 512, A = 18, S = 64, K = 2, N = S + 1;
    Params p;
    p.algorithm = algorithm;
    p.discount = 0.997;
    p.dirichlet_fraction = algorithm == ALG_PUCT ? 0.25 : 0.0;
    p.leaves_per_step = K;
    // sequential-halving table (same construction as forest.cpp)
    int rows = p.max_considered + 1;
    std::vector<int32_t> table((size_t)rows * S, 0);
    for (int c = 0; c < rows; ++c) {
        int32_t* row = table.data() + (size_t)c * S;
        if (c <= 1) { for (int i = 0; i < S; ++i) row[i] = i; continue; }
        int log2max = (int)ceil(log2((double)c));
        std::vector<int32_t> visits(c, 0);
        int nc = c, filled = 0;
        while (filled < S) {
            int extra = (int)(S / (log2max * nc)); if (extra < 1) extra = 1;
            for (int e = 0; e < extra; ++e) {
                for (int i = 0; i < nc && filled < S; ++i) row[filled++] = visits[i];
                for (int i = 0; i < nc; ++i) visits[i] += 1;
            }
            nc = nc / 2 < 2 ? 2 : nc / 2;
        }
    }
    std::vector<float> root_logits((size_t)B * A);
    for (size_t i = 0; i < root_logits.size(); ++i) root_logits[i] = (float)(2.0 * hash_unit(i + 99) - 1.0);

    // CPU
    HostForest h;
    const int stat_len = 2 * N + 2 * K + 2;
    host_alloc(h, B, A, N, K, table, S, p, stat_len);
    std::vector<float> reward((size_t)B * K), value((size_t)B * K), logits((size_t)B * K * A);
    for (int b = 0; b < B; ++b) {
        double row[64]; uint8_t ones[64];
        for (int a = 0; a < A; ++a) { row[a] = root_logits[(size_t)b * A + a]; ones[a] = 1; }
        h.t.rng[b] = tree_seed(7, (uint64_t)b);
        init_root(h.t, b, 0.0, row, ones);
        begin_tree(h.t, p, b, S);
    }
    for (int step = 0; step < S / K; ++step) {
        for (int b = 0; b < B; ++b) select_tree(h.t, p, b);
        for (int64_t m = 0; m < (int64_t)B * K; ++m)
            if (h.t.leaf_kind[m] == LEAF_EXPAND) toy_outputs(h.t, m, reward.data(), value.data(), logits.data());
        for (int b = 0; b < B; ++b) {
            double row[64]; uint8_t ones[64];
            for (int k = 0; k < h.t.step_leaves[b]; ++k) {
                int64_t m = (int64_t)b * K + k;
                if (h.t.leaf_kind[m] == LEAF_EXPAND) {
                    for (int a = 0; a < A; ++a) { row[a] = logits[m * A + a]; ones[a] = 1; }
                    init_node(h.t, b, h.t.leaf_node[m], reward[m], value[m], 0, row, ones);
                }
                backup_leaf(h.t, p, b, k);
            }
            h.t.step_leaves[b] = 0;
        }
    }

    // GPU
    cuda::DeviceForest d;
    if (!d.allocate(B, A, N, K, table.data(), rows, S, h.f64[11].data(), h.f64[12].data(), h.f64[13].data(), stat_len)) { printf("device allocation failed\n"); return 2; }
    float *d_reward, *d_value, *d_logits, *d_root;
    cudaMalloc(&d_reward, sizeof(float) * B * K); cudaMalloc(&d_value, sizeof(float) * B * K);
    cudaMalloc(&d_logits, sizeof(float) * B * K * A); cudaMalloc(&d_root, sizeof(float) * B * A);
    cudaMemcpy(d_root, root_logits.data(), sizeof(float) * B * A, cudaMemcpyHostToDevice);
    roots_kernel<<<cuda::blocks_for(B, 128), 128>>>(d.view, d_root);
    cuda::launch_begin(d.view, p, S, 0);
    for (int step = 0; step < S / K; ++step) {
        cuda::launch_select(d.view, p, 0);
        toy_model_kernel<<<cuda::blocks_for(B * K, 128), 128>>>(d.view, d_reward, d_value, d_logits);
        cuda::launch_expand_backup(d.view, p, d_reward, d_value, d_logits, nullptr, nullptr, 0);
    }
    cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) { printf("CUDA error: %s\n", cudaGetErrorString(err)); return 2; }
    std::vector<int32_t> visits((size_t)B * N), num_nodes(B);
    std::vector<double> value_sum((size_t)B * N);
    cudaMemcpy(visits.data(), d.view.visits, sizeof(int32_t) * B * N, cudaMemcpyDeviceToHost);
    cudaMemcpy(value_sum.data(), d.view.value_sum, sizeof(double) * B * N, cudaMemcpyDeviceToHost);
    cudaMemcpy(num_nodes.data(), d.view.num_nodes, sizeof(int32_t) * B, cudaMemcpyDeviceToHost);
    int visit_mismatch = 0, node_mismatch = 0;
    double max_err = 0.0;
    for (int b = 0; b < B; ++b) {
        if (num_nodes[b] != h.t.num_nodes[b]) ++node_mismatch;
        for (int n = 0; n < N; ++n) {
            size_t i = (size_t)b * N + n;
            if (visits[i] != h.t.visits[i]) { ++visit_mismatch; continue; }
            double e = fabs(value_sum[i] - h.t.value_sum[i]);
            if (e > max_err) max_err = e;
        }
    }
    printf("%s: B=%d A=%d S=%d K=%d  trees with different node counts %d, nodes with different visits %d, "
           "max |value_sum difference| %.3g\n", algorithm == ALG_PUCT ? "puct" : "gumbel", B, A, S, K, node_mismatch,
           visit_mismatch, max_err);
    cudaFree(d_reward); cudaFree(d_value); cudaFree(d_logits); cudaFree(d_root);
    return (node_mismatch == 0 && visit_mismatch == 0 && max_err < 1e-9) ? 0 : 1;
}

int main() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("no CUDA device: self test skipped\n");
        return 77;
    }
    int rc = run_selftest(ALG_PUCT);
    rc |= run_selftest(ALG_GUMBEL);
    printf(rc == 0 ? "CUDA self test: GPU and CPU searches agree\n" : "CUDA self test: MISMATCH\n");
    return rc;
}
#endif
