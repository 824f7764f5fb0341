# Evaluate OpenAI's gpt2 (124M) on HellaSwag and LAMBADA with eval.py (the data downloads once, to data/eval/).
# $ python eval.py config/eval_tasks_gpt2.py
# $ torchrun --standalone --nproc_per_node=8 eval.py config/eval_tasks_gpt2.py    # one node, 8 GPUs
# Published figures to set beside the results (not measured in this repository: its test machine has no weights):
#   hellaswag  acc 0.2892, acc_norm 0.3114   lm-evaluation-harness, 0-shot (as quoted in llm.c's dev/data/hellaswag.py)
#              acc_token ~0.2955               llm.c's own scoring (its "acc_norm": per-token average, on the raw ctx
#                                              field without the harness's clean-up: close to acc_token, not equal)
#   lambada    acc 45.99%, ppl 35.13       the GPT-2 paper, Table 3
#   (the paper's LAMBADA accuracy used a stop-word filter and its own text processing, so eval.py's
#   lambada, which follows the harness's lambada_openai, is not expected to reproduce it exactly;
#   the harness's ppl is per word, exp of minus the mean log-likelihood of a last word)
# The loss on OpenWebText is train.py's job: config/eval_gpt2.py.
init_from = 'gpt2'
tasks = 'hellaswag,lambada'
batch_size = 16
