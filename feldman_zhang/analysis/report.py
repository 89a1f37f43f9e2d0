r"""One self-contained HTML page per finished run.

  python -m feldman_zhang.analysis.report --workdir=runs/digits   # -> runs/digits/report.html

The page holds the trained models' accuracy, the counts that matter (examples
with mem over the run's bar, pairs selected, diverged models), label noise and
convergence when the run has them, the galleries and the pair grid, and the
config. Images are embedded as base64 data: URIs, so the one file can be
mailed, attached to an issue or opened offline.

build() only orders the sections: those made from the run's own files are
report_sections', those from other commands' results (the experiments, the
privacy analyses) report_experiments', and report_html holds the markup.
"""

import os

from absl import flags

from feldman_zhang import config as config_lib
from feldman_zhang import store
from feldman_zhang.analysis import commands
from feldman_zhang.analysis import export_pairs
from feldman_zhang.analysis import outputs
from feldman_zhang.analysis import report_experiments
from feldman_zhang.analysis import report_html
from feldman_zhang.analysis import report_sections
from feldman_zhang.analysis import runs

FLAGS = flags.FLAGS


def build(run: runs.Run, infl_threshold=0.15, mem_threshold=0.25, grids=8,
          table_rows=20) -> str:
  """The report of a run, as one HTML string."""
  table = caveat = None
  if runs.has_influence(run.estimates):
    table = export_pairs.with_labels(export_pairs.select_pairs(
        run.estimates, infl_threshold, mem_threshold), run.dataset)
    caveat = export_pairs.topk_caveat(run, infl_threshold, mem_threshold)
  num_pairs = None if table is None else len(table['tr_idx'])
  name, mem = run.dataset.name, run.estimates['mem']
  caption = report_sections.captions(run)
  parts = [f'<p class="note">'
           f'{report_html.escape(os.path.abspath(run.workdir))}</p>']
  # What the console printed as notes: first, before any number or pair.
  parts += [f'<p class="caveat">Caveat: {report_html.escape(c)}.</p>'
            for c in report_sections.run_caveats(run)]
  parts += ['<h2>Summary</h2>', report_html.table(
      None, report_sections.headline(run, num_pairs), True)]
  parts += report_sections.convergence_parts(run.summary)
  parts += report_sections.memorization_parts(run, caption)
  parts += report_sections.pair_parts(run.dataset, table, caveat,
                                      infl_threshold, mem_threshold, grids,
                                      table_rows, caption)
  parts += report_experiments.experiment_parts(run.workdir, name, mem,
                                               caption)
  parts += report_experiments.privacy_parts(run.workdir, name, mem)
  parts += ['<h2>Config</h2>', report_html.table(
      None, sorted(config_lib.flatten(run.resolved).items()), True)]
  return report_html.page(f'Memorization and influence: {name}', parts)


def write(path: str, page: str) -> str:
  return outputs.write_file(path, lambda f: f.write(page.encode('utf-8')),
                            'name another file with --out')


def define_flags():
  """Defined only when run as a script, like those of the modules it uses."""
  flags.DEFINE_string('workdir', None, 'A finished estimate run.',
                      required=True)
  flags.DEFINE_string('out', None, 'The HTML file (default '
                      'WORKDIR/report.html).')
  flags.DEFINE_float('infl_threshold', 0.15, 'Pairs: infl >= this.')
  flags.DEFINE_float('mem_threshold', None, 'Pairs: mem of the training '
                     "example >= this (default: the run's "
                     'summary.mem_threshold, the paper\'s 0.25).')
  flags.DEFINE_integer('grids', 8, 'Test images in the pair grid.',
                       lower_bound=0)
  flags.DEFINE_integer('table_rows', 20, 'Pairs listed in the table.',
                       lower_bound=1)


def main(argv):
  run = runs.load_run_or_exit(argv, FLAGS.workdir)
  outputs.clear_if_idle(FLAGS.workdir)  # report.html's killed writes
  mem_threshold = (runs.mem_threshold(run) if FLAGS.mem_threshold is None
                   else FLAGS.mem_threshold)
  page = build(run, FLAGS.infl_threshold, mem_threshold, FLAGS.grids,
               FLAGS.table_rows)
  path = FLAGS.out or store.Workdir(FLAGS.workdir).analysis('report.html')
  write(path, page)
  print(f'wrote {path}')


def run():
  """The command (python -m feldman_zhang.analysis.report)."""
  commands.run(define_flags, main)


if __name__ == '__main__':
  run()
