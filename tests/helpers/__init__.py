"""What several test files share: plain functions, classes and constants, never fixtures (those are in
tests/conftest.py). A test file imports from here, never from another test file or from a conftest: pytest
imports every conftest under the same module name, and test files move between folders."""
