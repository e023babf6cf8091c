from synergy_ingest.app import main

main()
