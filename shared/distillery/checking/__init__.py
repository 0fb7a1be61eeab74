"""Checking a dataset as a job on the `cpu` queue, never in a gateway request.

```
gateway: POST /datasets ──► archive staged at `staged_archive_key(id)`, row `checking`, message
cpu worker: job.run_check ──► child process under RLIMIT_AS and a deadline (check.py):
    unpack with the archive limits · decode every image under the pixel limit · validate
    layout, pairs, labels · class statistics · upload the tree to `datasets/<id>/`
  ──► `ready` (summary, stats) | `invalid` (error naming the file or the limit; every object
      it wrote and the staged archive removed)
```

`keys` and `lifecycle` import no torch (the gateway and the reconciler use them); `check` (the
child's work) imports the data code.
"""
