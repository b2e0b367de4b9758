// Persistent thread pool shared by the search forest and the replay gather.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace arbor {

// One short busy-wait step: the CPU's spin-loop hint where there is one.
inline void cpu_relax() {
#if defined(__SSE2__)
    _mm_pause();
#endif
}

// ---------------------------------------------------------------- thread pool
// Persistent workers; run(n, f) calls f(begin, end) on contiguous, disjoint
// ranges of [0, n), the calling thread taking the first, and then any range
// whose worker has not started it yet (a descheduled worker is not waited
// for). Trees never share state, so results do not depend on the number of
// threads, on the split or on who runs which range.
// Workers spin briefly between jobs (a search issues two jobs per simulation
// step, microseconds apart) and then sleep on a condition variable. With
// pauses > 0 they first busy-wait on the CPU's spin-loop hint, which picks up
// a job a few microseconds away without a system call (each yield costs about
// a microsecond in the kernel); the search forest's pool does, so that two
// threads pay off from about 16 trees up.
class Pool {
   public:
    // spin: how many times an idle worker yields before sleeping (0: sleep at once);
    // pauses: how many spin-loop hints it issues before those yields (and the
    // caller before yielding while it waits for the workers).
    explicit Pool(int threads, int spin = 2000, int pauses = 0)
        : threads_(std::max(1, threads)), spin_(std::max(0, spin)), pauses_(std::max(0, pauses)),
          claimed_(threads_) {
        for (auto& c : claimed_) c.store(0);
        for (int w = 1; w < threads_; ++w) workers_.emplace_back([this, w] { loop(w); });
    }
    ~Pool() {
        {
            std::lock_guard<std::mutex> lk(m_);
            stop_.store(true);
            generation_.fetch_add(1);
        }
        cv_.notify_all();
        for (auto& th : workers_) th.join();
    }
    int threads() const { return threads_; }

    void run(int n, const std::function<void(int, int)>& f, int min_per_thread = 8) {
        int parts = std::min(threads_, n / std::max(1, min_per_thread));
        if (parts <= 1) {
            if (n > 0) f(0, n);
            return;
        }
        uint64_t gen;
        {
            std::lock_guard<std::mutex> lk(m_);
            job_ = &f;
            n_ = n;
            parts_ = parts;
            pending_.store(parts - 1);
            gen = generation_.fetch_add(1) + 1;
        }
        cv_.notify_all();
        f(0, part_end(n, 0, parts));
        // Parts whose worker has not started yet (descheduled, or still
        // waking) are run here rather than waited for.
        for (int w = 1; w < parts; ++w)
            if (claim(w, gen)) {
                f(part_end(n, w - 1, parts), part_end(n, w, parts));
                pending_.fetch_sub(1);
            }
        for (int spin = 0; spin < pauses_ && pending_.load() != 0; ++spin) cpu_relax();
        for (int spin = 0; spin < spin_ && pending_.load() != 0; ++spin) std::this_thread::yield();
        if (pending_.load() != 0) {
            std::unique_lock<std::mutex> lk(m_);
            done_cv_.wait(lk, [this] { return pending_.load() == 0; });
        }
    }

   private:
    void loop(int w) {
        uint64_t seen = 0;
        for (;;) {
            for (int spin = 0; spin < pauses_ && generation_.load() == seen; ++spin) cpu_relax();
            for (int spin = 0; spin < spin_ && generation_.load() == seen; ++spin) std::this_thread::yield();
            const std::function<void(int, int)>* job;
            int n, parts;
            {
                std::unique_lock<std::mutex> lk(m_);
                cv_.wait(lk, [&] { return generation_.load() != seen; });
                seen = generation_.load();
                if (stop_.load()) return;
                job = job_;
                n = n_;
                parts = parts_;
            }
            if (w < parts && job && claim(w, seen)) {
                (*job)(part_end(n, w - 1, parts), part_end(n, w, parts));
                if (pending_.fetch_sub(1) == 1) {
                    std::lock_guard<std::mutex> lk(m_);
                    done_cv_.notify_one();
                }
            }
        }
    }
    // Part w of n items split into `parts` is [part_end(w - 1), part_end(w)).
    static int part_end(int n, int w, int parts) { return (int)((int64_t)n * (w + 1) / parts); }
    // Part w of job generation gen goes to whoever claims it first: its worker
    // or the caller. A worker that wakes after the caller took its part (or
    // after a later job began) claims nothing.
    bool claim(int w, uint64_t gen) {
        uint64_t prev = claimed_[w].load();
        return prev < gen && claimed_[w].compare_exchange_strong(prev, gen);
    }
    int threads_;
    int spin_;
    int pauses_;
    std::vector<std::atomic<uint64_t>> claimed_;  // per part: the last job generation that claimed it
    std::vector<std::thread> workers_;
    std::mutex m_;
    std::condition_variable cv_, done_cv_;
    const std::function<void(int, int)>* job_ = nullptr;
    int n_ = 0, parts_ = 0;
    std::atomic<int> pending_{0};
    std::atomic<uint64_t> generation_{0};
    std::atomic<bool> stop_{false};
};

}  // namespace arbor
