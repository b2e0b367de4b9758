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
