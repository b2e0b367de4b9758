"""Search: the batched compiled MCTS core and its plain-Python reference."""
