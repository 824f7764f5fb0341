# Step 3 of align.py's demo: PPO against the reward model of config/reward_shakespeare.py, with a per-token KL
# penalty to the SFT policy (add --ptx_coef=1.0 for PPO-ptx, mixing in character-level Shakespeare).
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# $ python data/shakespeare_prefs/prepare.py && python train.py config/sft_shakespeare.py
# $ python reward.py config/reward_shakespeare.py
# $ python ppo.py config/ppo_shakespeare.py
# Measured: see the end of this header (filled in from the run).
# 64 rollouts per iteration (4 micro-batches of 16), 4 epochs of 2 minibatches = 8 optimizer steps per iteration.
out_dir = 'out-ppo-shakespeare'
init_from = 'out-sft-shakespeare'
reward_model = 'out-reward-shakespeare'
prompts = 'data/shakespeare_prefs/prefs_train.jsonl'
iters = 40
batch_size = 64
micro_batch = 16
minibatches = 2
ppo_epochs = 4
max_new_tokens = 40
kl_coef = 0.05
learning_rate = 1e-4
value_lr = 1e-4
device = 'cpu'
