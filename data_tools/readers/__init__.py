"""One reader per raw layout; each returns `data_tools.sessions.RawSessions`."""

from data_tools.options import PrepareOptions
from data_tools.readers import amazon_m2, purchase_log, recbole, rechorus
from data_tools.sessions import RawSessions

READERS = {
    "online_retail": purchase_log.read_online_retail,
    "purchase_log": purchase_log.read_purchase_log,
    "amazon_m2": amazon_m2.read_amazon_m2,
    "recbole": recbole.read_recbole,
    "rechorus": rechorus.read_rechorus,
}


def read(options: PrepareOptions) -> RawSessions:
  """Reads `options.raw_path` with the reader of `options.raw_format`."""
  return READERS[options.raw_format](options)
