"""The built-in Chinese tasks (``zh_*``), the corpus readers they share (:mod:`.corpora`,
:mod:`.peoples_daily`), and the side corpus ``zh-news-side``."""
