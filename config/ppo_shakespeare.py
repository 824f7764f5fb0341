# Step 3 of the alignment demo (docs/alignment.md): PPO against the reward model of config/reward_shakespeare.py, with a per-token KL
# penalty to the SFT policy (add --ptx_coef=1.0 for PPO-ptx, mixing in character-level Shakespeare).
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# $ python data/shakespeare_prefs/prepare.py && python train.py config/sft_shakespeare.py
# $ python reward.py config/reward_shakespeare.py
# $ python ppo.py config/ppo_shakespeare.py
# Measured on 2 cores of an AMD EPYC (lscpu's model name; avx2, fp32), shared with two other engineers' jobs (load
# average ~5), with OMP_NUM_THREADS=1 and torch 2.13: 194 s. Mean reward (the SFT policy's is 0 on average) -1.41 at
# iteration 0 -> 7.24 at 3 -> 9.41 at 7 -> 9.41 at 19; KL to the SFT policy (per response, summed over its tokens) 0
# -> 2.20 at 3 -> 4.69 at 7, then flat at 3.7-4.4 up to 19 (the penalty holds it); entropy 1.53 -> 1.41; clip fraction
# 0.13 -> 0.02. The rule itself (data/shakespeare_prefs/check.py, 400 held-out prompts): the letter e is 11.3% of the
# SFT policy's letters and 0.4% of the PPO policy's, at the same response length (28.8 vs 28.2 characters). With
# kl_coef=0.05 (a trial) the KL kept growing, past 8 by iteration 9. PPO-ptx (--ptx_coef=1.0
# --out_dir=out-ppo-ptx-shakespeare, 340 s): reward -1.41 -> 5.60 at 3 -> 6.56 at 19, KL 3.7 at 19, e share 5.6%,
# pretraining loss (ptx_loss) 1.82 -> 1.53. The alignment tax, `python eval.py --out_dir=RUN --tasks=perplexity
# --perplexity_data=shakespeare_char --stride=64 --limit=500` (loss per character on held-out Shakespeare): pretrained
# 1.604, SFT 2.075, PPO 2.366, PPO-ptx 1.669, DPO 2.709.
# 64 rollouts per iteration (4 micro-batches of 16), 4 epochs of 2 minibatches = 8 optimizer steps per iteration;
# 20 iterations = 1,280 responses.
out_dir = 'out-ppo-shakespeare'
init_from = 'out-sft-shakespeare'
reward_model = 'out-reward-shakespeare'
prompts = 'data/shakespeare_prefs/prefs_train.jsonl'
iters = 20
batch_size = 64
micro_batch = 16
minibatches = 2
ppo_epochs = 4
max_new_tokens = 40
kl_coef = 0.5
learning_rate = 1e-4
value_lr = 1e-4
device = 'cpu'
