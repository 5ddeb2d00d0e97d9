"""The worker runtime (layer L1): the code of the template, zygote and worker processes.

Nothing here runs in the node process; the node reaches it only through the frames of
``anycore.wire`` and the control messages documented in ``template`` and ``zygote``.
"""
