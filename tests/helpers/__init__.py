"""What the test suites share, imported as ``helpers.<module>`` (pyproject.toml puts tests/ on
``sys.path`` through pytest's ``pythonpath``). Conftests hold fixtures only; a fixture defined
here is active in a suite only where its conftest (or a test module) imports it.

* ``cli``: the command line as users run it — ``chunkfs(*args, env=, cwd=, timeout=, expect=)``,
  one runner with one contract (``expect=0`` success, ``expect=NotFound`` or an int: exactly that
  exit code and a one-line ``chunkfs: error:``, ``expect=None`` nothing), and ``cli_json``.
* ``repos``: repositories through the library API — ``small_settings``; the ``repo_path``,
  ``repo_settings`` and ``make_repo`` fixtures; ``closing``; ``assert_same_file``, ``same_tree``,
  ``roundtrip``; inspection (``extents_of``, ``location``, ``pack_path``, ``stored_bytes``, ...).
* ``checkpoints``: real checkpoints — small seeded models saved with ``torch.save`` and
  ``safetensors`` (``base_model``, ``step``, ``save``), where their tensors lie in the file
  (``data_regions``, ``metadata_bytes``, ``allowed_growth``).
* ``tiers``: tiered repositories — ``tiered_settings``, ``s3_url``, runs of checkpoints
  (``write_run``, ``import_run``, ``export_and_compare``), where packs are, ``RequestCounter``.
* ``gc``: the gc suite's repositories — ``settings``/``gc_settings``, contents built from seeded
  64 KiB blocks, ``write``/``read``/``rmtree`` through the namespace, packs spread over tiers.
* ``admin``: replicated repositories (``admin_settings``, ``make_runs``) and tampering with the
  objects on S3 (``flip_byte``, ``s3_get``/``s3_put``/``s3_delete``).
* ``s3servers``: the S3 servers (moto in this process, ``rclone serve s3`` as a subprocess),
  their credentials and bucket, ``free_port``.
* ``s3fixtures``: the fixtures over them — ``moto_server``, ``rclone_server``, ``own_rclone``,
  ``aws_env`` (autouse where imported: test credentials and nothing else boto3 could find) and
  ``isolate_aws``.
* ``mount``: real mounts — ``Mount`` (mount, umount, kill, cleanup, the daemon log's problems),
  mount state (``is_mounted``, ``mount_device``), ``configure``, ``renameat2``.
* ``loadworkers``, ``crashwriter``: programs the FUSE tests run as separate processes
  (``python <module file> ARGS``): the writers, listers and readers of the names-under-load
  test, and the checkpoint writer of the crash test.
* ``dcpranks``: one rank of a torch.distributed.checkpoint job (gloo, DTensors), run WORLD
  at once by the chunkfs.torch tests.
"""
