# The alignment demo's (docs/alignment.md) DPO instead of reward model + PPO: the SFT policy trained straight from the ranked groups of
# data/shakespeare_prefs (each group of 4 gives 6 pairs; the rule: fewer letter e's is better).
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# $ python data/shakespeare_prefs/prepare.py && python train.py config/sft_shakespeare.py
# $ python dpo.py config/dpo_shakespeare.py
# Measured on 2 cores of an AMD EPYC (lscpu's model name; avx2, fp32), shared with two other engineers' jobs (load
# average ~5), with OMP_NUM_THREADS=1 and torch 2.13: 158 s. Held-out preference accuracy (the share of pairs whose
# implicit reward margin is positive; 0 at step 0, where the policy is the reference) 0.82 at 25 -> 0.83 at 50 -> 0.89
# at 75 -> 0.90 at 100; implicit reward margin 0 -> 0.17 -> 0.49 -> 0.99 -> 1.47; val loss 0.693 -> 0.312. The rule
# itself (data/shakespeare_prefs/check.py): the letter e is 11.3% of the SFT policy's letters and 0.2% of the DPO
# policy's.
# 32 pairs per step; 100 steps = 3,200 pairs of the 24,000; held-out: the first 600 of the 2,400 pairs.
out_dir = 'out-dpo-shakespeare'
init_from = 'out-sft-shakespeare'
train_data = 'data/shakespeare_prefs/prefs_train.jsonl'
val_data = 'data/shakespeare_prefs/prefs_val.jsonl'
beta = 0.1
batch_size = 32
max_iters = 100
learning_rate = 1e-4
eval_interval = 25
max_val = 600
device = 'cpu'
