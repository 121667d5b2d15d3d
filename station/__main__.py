from station.app.cli import main

if __name__ == "__main__":  # guarded: child processes may import this module
    raise SystemExit(main())
