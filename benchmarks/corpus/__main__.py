from benchmarks.corpus.make import main

raise SystemExit(main())
