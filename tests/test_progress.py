"""The progress line's rate and ETA follow the recent pace, not the average since the start."""
from runtime.progress import ProgressLine


def test_rate_follows_the_recent_pace_after_a_fast_start():
    line = ProgressLine(total=100_000, enabled=False, window=60.0)
    t0 = line.samples[0][0]
    # 1,600 random-action steps in 10 s, then 20 steps/s of learning for 5 minutes,
    # reported ten times a second
    for i in range(1, 101):
        steps = 16 * i
        line.rate(steps, now=t0 + 0.1 * i)
    for i in range(1, 3001):
        steps = 1600 + 2 * i
        rate = line.rate(steps, now=t0 + 10.0 + 0.1 * i)
    assert abs(rate - 20.0) < 0.5          # the average since the start would be 23.2
    assert len(line.samples) <= 62         # about one sample a second within the window


def test_rate_before_the_window_fills_is_the_average_since_the_start():
    line = ProgressLine(total=1000, start=200, enabled=False, window=60.0)
    t0 = line.samples[0][0]
    line.rate(250, now=t0 + 5.0)
    assert abs(line.rate(300, now=t0 + 10.0) - 10.0) < 1e-9   # counted from the resumed step 200


def test_evaluation_shows_its_progress_in_episodes(capsys):
    """eval.py's episodes report on stderr as training does: episodes done, mean return, ETA."""
    import numpy as np

    from runtime.evaluation import run_episodes

    class AlwaysLeft:
        def act(self, obs, explore=False):
            return np.zeros(len(obs), dtype=np.int64)

    cartpole = {"kind": "gym", "id": "CartPole-v1", "name": "cartpole"}
    returns = run_episodes(AlwaysLeft(), cartpole, 6, 3, seed=0, progress=True)
    err = capsys.readouterr().err
    assert len(returns) == 6
    last = err.strip().splitlines()[-1]
    assert last.startswith("[         6 / 6 episodes]") and "episodes/s" in last
    assert f"return {returns.mean():8.2f}" in last
    run_episodes(AlwaysLeft(), cartpole, 2, 2, seed=0)
    assert capsys.readouterr().err == ""
