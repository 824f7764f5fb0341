# Step 2 of align.py's demo: a reward model for the rule of data/shakespeare_prefs (fewer letter e's is better),
# trained from the SFT model on ranked groups of K = 4 responses, all 6 pairs of a group in one batch.
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# $ python data/shakespeare_prefs/prepare.py && python train.py config/sft_shakespeare.py
# $ python reward.py config/reward_shakespeare.py
# Measured: see the end of this header (filled in from the run).
# 16 groups * 4 responses = 64 sequences per step; 300 steps = 4,800 groups, ~1.2 passes over the 4,000.
out_dir = 'out-reward-shakespeare'
init_from = 'out-sft-shakespeare'
train_data = 'data/shakespeare_prefs/prefs_train.jsonl'
val_data = 'data/shakespeare_prefs/prefs_val.jsonl'
batch_size = 16
max_iters = 300
learning_rate = 1e-3
warmup_iters = 20
eval_interval = 100
norm_prompts = 256
max_new_tokens = 40
device = 'cpu'
