"""Sphinx configuration of jaxclust's documentation.

Build (CI runs this; warnings are errors):

  pip install -e '.[docs]' && python -m sphinx -W --keep-going -b html docs build/docs

``.. config-table:: ALGO`` renders the config keys of ``--algo ALGO`` with their defaults, the
comment beside each in the source and the per-dataset settings, so that the tables follow
the code.
"""

import dataclasses
import inspect
import io
import os
import re
import sys
import tokenize

from docutils import nodes
from docutils.parsers.rst import Directive

sys.path.insert(0, os.path.abspath(".."))

import jaxclust

project = "jaxclust"
author = "the jaxclust authors"
copyright = "the jaxclust authors"
release = version = jaxclust.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, so NamedTuple fields are not described twice
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings give shapes; the annotations repeat them less clearly
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "Deep image clustering as pure JAX functions", "fixed_sidebar": True}
html_static_path: list[str] = []


def _field_comments(config_cls) -> dict[str, str]:
  """The ``# comment`` on the line of each field in the classes that define the config."""
  comments: dict[str, str] = {}
  for cls in reversed(config_cls.__mro__):
    if not dataclasses.is_dataclass(cls):
      continue
    source = inspect.getsource(cls)
    lines: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
      if token.type == tokenize.COMMENT:
        lines[token.start[0]] = token.string.lstrip("#").strip()
    for number, line in enumerate(source.splitlines(), start=1):
      name = line.strip().split(":", 1)[0]
      if name in cls.__annotations__ and number in lines:
        comments[name] = lines[number]
      elif name in cls.__annotations__:
        comments.pop(name, None)  # redefined without a comment: the older one may not apply
  return comments


class ConfigTable(Directive):
  """``.. config-table:: depict``: key, default and source comment of each config field."""

  required_arguments = 1

  def run(self):
    from jaxclust import algos

    name = self.arguments[0]
    if name not in algos.REGISTRY:
      raise self.error(f"unknown algorithm {name!r}")
    config_cls = algos.REGISTRY[name].Config
    comments = _field_comments(config_cls)
    rows = [("key", "default", "note in the source")]
    for field in dataclasses.fields(config_cls):
      default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
      rows.append((field.name, repr(default), comments.get(field.name, "")))
    table = nodes.table()
    group = nodes.tgroup(cols=3)
    table += group
    for width in (24, 20, 56):
      group += nodes.colspec(colwidth=width)
    for section, body in ((nodes.thead(), rows[:1]), (nodes.tbody(), rows[1:])):
      for cells in body:
        row = nodes.row()
        for i, text in enumerate(cells):
          entry = nodes.entry()
          entry += nodes.paragraph("", "", nodes.literal(text, text) if i < 2 and section.tagname == "tbody"
                                   else nodes.Text(text))
          row += entry
        section += row
      group += section
    return [table, *self._dataset_settings(algos.REGISTRY[name])]

  @staticmethod
  def _dataset_settings(module) -> list:
    """A list of the settings that ``DATASET_SETTINGS`` puts over the defaults per dataset."""
    settings = getattr(module, "DATASET_SETTINGS", {})
    if not settings:
      return []
    intro = nodes.paragraph("", "Per dataset, these settings replace the defaults (the dataset's "
                            "number of classes sets n_clusters where none is given):")
    items = nodes.bullet_list()
    for dataset, values in settings.items():
      text = ", ".join(f"{k}={v!r}" for k, v in values.items())
      items += nodes.list_item("", nodes.paragraph("", "", nodes.strong(dataset, dataset), nodes.Text(": "),
                                                   nodes.literal(text, text)))
    return [intro, items]


def _is_clean_rest(lines: list[str]) -> bool:
  """Whether ``lines`` parse as reStructuredText without a warning."""
  from docutils.core import publish_doctree

  # Sphinx's roles need its build environment: check the text with them made literals.
  text = re.sub(r":[\w:.-]+:`([^`]*)`", r"``\1``", "\n".join(lines))
  doctree = publish_doctree(text, settings_overrides={"report_level": 5, "halt_level": 5})
  return not any(m["level"] >= 2 for m in doctree.findall(nodes.system_message))


def preformat_loose_module_docstrings(app, what, name, obj, options, lines):
  """A module docstring written as plain text rather than reStructuredText (aligned
  columns, lists run on from a paragraph) is shown as it is, in a literal block, instead
  of failing the build; function and class docstrings must parse."""
  del app, name, obj, options
  if what == "module" and lines and not _is_clean_rest(lines):
    lines[:] = ["::", ""] + ["   " + line for line in lines] + [""]


def setup(app):
  app.add_directive("config-table", ConfigTable)
  app.connect("autodoc-process-docstring", preformat_loose_module_docstrings, priority=600)
  return {"parallel_read_safe": True}
