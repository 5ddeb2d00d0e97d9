"""L1 — the supervisor: a release's zygote and workers (``release``), the handle on a worker
(``worker``) and on a zygote (``zygote``); ``policy`` is its pure L0 restart decision."""
