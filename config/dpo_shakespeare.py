# align.py's demo, DPO instead of reward model + PPO: the SFT policy trained straight from the ranked groups of
# data/shakespeare_prefs (each group of 4 gives 6 pairs; the rule: fewer letter e's is better).
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# $ python data/shakespeare_prefs/prepare.py && python train.py config/sft_shakespeare.py
# $ python dpo.py config/dpo_shakespeare.py
# Measured: see the end of this header (filled in from the run).
# 32 pairs per step; 200 steps = 6,400 pairs of the 24,000.
out_dir = 'out-dpo-shakespeare'
init_from = 'out-sft-shakespeare'
train_data = 'data/shakespeare_prefs/prefs_train.jsonl'
val_data = 'data/shakespeare_prefs/prefs_val.jsonl'
beta = 0.1
batch_size = 32
max_iters = 200
learning_rate = 1e-4
eval_interval = 50
max_val = 600
device = 'cpu'
