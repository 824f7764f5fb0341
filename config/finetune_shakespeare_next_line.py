# GPT-1's recipe on a CPU: which of four lines comes next in a Shakespeare speech (multiple choice), from the
# character-level model that config/train_shakespeare_char_cpu.py pretrains (4 layers, 128 wide, context 64).
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# $ python data/shakespeare_tasks/prepare.py
# $ python finetune.py config/finetune_shakespeare_next_line.py
# $ python finetune.py config/finetune_shakespeare_next_line.py --from_scratch=True --out_dir=out-next-line-scratch
# Measured (2-core AMD EPYC, AVX2, fp32; 125 steps, 149 s): best val accuracy 0.311, 0.278 at the last step,
# against 0.281 for the majority answer and 0.25 chance: not yet a clear gain (see finetune_shakespeare_follows.py).
init_from = 'out-shakespeare-char-cpu'
out_dir = 'out-next-line'
task = 'multiple_choice'
data_files = 'train=data/shakespeare_tasks/next_line_train.jsonl,val=data/shakespeare_tasks/next_line_val.jsonl'
fields = 'context,answer0,answer1,answer2,answer3'
label = 'label'
device = 'cpu'
batch_size = 32
epochs = 1
max_train = 4000          # of 16,782 examples: 125 steps, a few minutes on 2 cores
max_eval = 800
learning_rate = 1e-3      # the paper's 6.25e-5 is for a 117M model; this one has 0.8M parameters
eval_interval = 25
