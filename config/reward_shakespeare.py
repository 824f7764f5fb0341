# Step 2 of the alignment demo (docs/alignment.md): a reward model for the rule of data/shakespeare_prefs (fewer letter e's is better),
# trained from the SFT model on ranked groups of K = 4 responses, all 6 pairs of a group in one batch.
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# $ python data/shakespeare_prefs/prepare.py && python train.py config/sft_shakespeare.py
# $ python reward.py config/reward_shakespeare.py
# Measured on 2 cores of an AMD EPYC (lscpu's model name; avx2, fp32), shared with two other engineers' jobs (load
# average ~5), with OMP_NUM_THREADS=1 and torch 2.13: 208 s. Held-out pairwise accuracy (400 groups, 2,400 pairs) 0.49
# at step 0 -> 0.92 at 100 -> 0.957 at 200 (val loss 0.698 -> 0.111). The SFT policy's mean reward on 256 training
# prompts was 4.52; the head's bias is shifted by it, so the SFT policy scores 0 on average.
# 16 groups * 4 responses = 64 sequences per step; 200 steps = 3,200 groups, 0.8 passes over the 4,000.
out_dir = 'out-reward-shakespeare'
init_from = 'out-sft-shakespeare'
train_data = 'data/shakespeare_prefs/prefs_train.jsonl'
val_data = 'data/shakespeare_prefs/prefs_val.jsonl'
batch_size = 16
max_iters = 200
learning_rate = 1e-3
warmup_iters = 20
eval_interval = 100
norm_prompts = 256
max_new_tokens = 40
device = 'cpu'
