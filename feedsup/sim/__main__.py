from .cli import sim

if __name__ == "__main__":
    sim(prog_name="feedsup sim")
