"""Several broker nodes on one Redis behaving as one broker (``--cluster NAME``).

``resp.py`` is a sans-IO RESP2 codec; ``client.py`` its thin Twisted client
(pipelined commands, pub/sub pushes, blocking stream reads); ``routes.py`` the
route table (remote filters -> nodes); ``router.py`` the cluster router on the
router seam; ``node.py`` the node's side of Redis.  docs/cluster.md describes it.
"""
