"""The command line: flag definitions shared by the scripts, and the strict parse."""
