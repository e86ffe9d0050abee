"""Every notebook in colabs/ runs top to bottom (tiny settings: JAXROBUST_NOTEBOOK_SMOKE=1)."""

import shutil

import nbclient
import nbformat
import pytest

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / 'colabs').glob('*.ipynb'))


def test_there_are_notebooks():
  assert {p.name for p in NOTEBOOKS} >= {'quickstart.ipynb', 'compare_methods.ipynb'}


def _run(path, monkeypatch, tmp_path):
  monkeypatch.setenv('JAXROBUST_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('XLA_FLAGS', '')        # one CPU device, as on a Colab CPU runtime
  monkeypatch.setenv('TMPDIR', str(tmp_path))
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name='python3',
                                   resources={'metadata': {'path': str(path.parent)}})
  client.execute()  # raises CellExecutionError naming the failing cell
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
            if o.get('output_type') == 'error']
  assert not errors


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch, tmp_path):
  _run(path, monkeypatch, tmp_path)


@pytest.mark.skipif(not (ROOT.parent / 'shared' / 'data' / 'cifar10').is_dir(),
                    reason='needs ../shared/data/cifar10, the data the committed runs were '
                           'trained on')
def test_comparison_notebook_loads_the_committed_runs(monkeypatch, tmp_path):
  # The notebook's other mode: the committed CIFAR-10 runs (copied, so nothing is written into
  # the repository), evaluated before, so only the table, subnets and pictures are computed.
  runs = tmp_path / 'runs'
  shutil.copytree(ROOT / 'results' / 'cpu_budget' / 'runs', runs)
  monkeypatch.setenv('JAXROBUST_RUNS_DIR', str(runs))
  _run(ROOT / 'colabs' / 'compare_methods.ipynb', monkeypatch, tmp_path)
  assert (tmp_path / 'jaxrobust_compare' / 'table.md').read_text().count('|') > 50
