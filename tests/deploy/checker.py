"""The pass/fail tally shared by the deployment checks."""


class Checker:
    def __init__(self, name=""):
        self.name = name
        self.passed = 0
        self.failures = []

    def check(self, ok, what):
        """Counts one check; `what` describes the failure."""
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok

    def report(self):
        """Prints the failures and the closing tally line; returns the exit code."""
        for f in self.failures:
            print(f"  FAIL {f}")
        print(f"{self.passed} passed, {len(self.failures)} failed")
        return 1 if self.failures else 0
