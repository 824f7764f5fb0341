"""
The loss curve train.py redraws at each evaluation (out_dir/loss.png), for users without wandb: the training loss
of every logged step, the train and val losses of each evaluation, and any task accuracies on a second axis.
"""
import os


def plot_losses(history, out_dir, title):
    """history: {'iter': [...], 'loss': [...], 'eval_iter': [...], 'train': [...], 'val': [...], 'tasks': [{...}]}.
    Written to a temp file and renamed, so a reader never sees half a picture."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(history['iter'], history['loss'], lw=0.8, alpha=0.6, label='train (per step)')
    ax.plot(history['eval_iter'], history['train'], 'o-', label='train (eval)')
    ax.plot(history['eval_iter'], history['val'], 'o-', label='val (eval)')
    accuracies = [k for k in (history['tasks'][-1] if history['tasks'] else {}) if k.endswith(('acc_norm', '/acc'))]
    if accuracies:  # on a second axis, beside the losses
        ax2 = ax.twinx()
        for k in accuracies:
            ax2.plot(history['eval_iter'], [m[k] for m in history['tasks']], 's--', label=k)
        ax2.set_ylabel('accuracy')
        ax2.legend(loc='upper center')
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss')
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    tmp = os.path.join(out_dir, 'loss.tmp.png')
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, os.path.join(out_dir, 'loss.png'))
