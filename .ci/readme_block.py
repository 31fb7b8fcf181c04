"""Print the shell block that follows `<!-- ci: NAME -->` in README.md.

CI runs the README's own set-up commands, so the README cannot drift from
what actually works on a fresh machine.
"""

import re
import sys
from pathlib import Path

name, readme = sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else "README.md")
pattern = rf"<!-- ci: {re.escape(name)} -->\s*```(?:bash|sh|console)?\n(.*?)```"
match = re.search(pattern, readme.read_text(), re.DOTALL)
if not match:
    sys.exit(f"{readme}: no fenced block after '<!-- ci: {name} -->'")
print(match[1], end="")
