from chunkfs.cli.main import entry

entry()
