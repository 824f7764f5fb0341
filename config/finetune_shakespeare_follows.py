# GPT-1's recipe on a CPU, entailment-style: does line b follow line a in the same Shakespeare speech (yes/no,
# half each), from the character-level model that config/train_shakespeare_char_cpu.py pretrains.
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# $ python data/shakespeare_tasks/prepare.py
# $ python finetune.py config/finetune_shakespeare_follows.py
# $ python finetune.py config/finetune_shakespeare_follows.py --from_scratch=True --out_dir=out-follows-scratch
# Measured (2-core AMD EPYC, AVX2, fp32; 250 steps, about a minute each): best val accuracy 0.595 (0.580 at the
# last step) from the pretrained model, 0.533 without pre-training (same architecture, fresh weights), and
# 0.521 for the majority class; 800 validation examples, so one standard error is ~0.018.
init_from = 'out-shakespeare-char-cpu'
out_dir = 'out-follows'
task = 'entailment'
data_files = 'train=data/shakespeare_tasks/follows_train.jsonl,val=data/shakespeare_tasks/follows_val.jsonl'
fields = 'a,b'
label = 'label'
device = 'cpu'
batch_size = 32
epochs = 1
max_train = 8000          # of 16,782 examples: 250 steps
max_eval = 800
learning_rate = 1e-3      # the paper's 6.25e-5 is for a 117M model; this one has 0.8M parameters
eval_interval = 50
