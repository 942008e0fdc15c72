def run(megabytes=300):
    return "x" * (megabytes * 1024 * 1024)
