"""Quick start: a small ResNet on scikit-learn's bundled digits — no download, ~1 minute on CPU.

    python -m jaxrobust.main --config=configs/quickstart.py --workdir=/tmp/jaxrobust_quickstart
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'digits'
  c.model = 'resnet8'
  c.num_epochs = 15.0
  c.batch_size = 64
  c.eval_batch_size = 128
  c.learning_rate = 0.05
  c.weight_decay = 5e-4
  c.lr_schedule = 'onecycle'
  c.log_every_steps = 50
  c.eval_every_epochs = 5
  return default.add_augmix_keys(c, enabled=False)
