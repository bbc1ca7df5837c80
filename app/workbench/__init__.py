"""The staff workbench (工作台) and the agent home: what needs doing today, and how today compares with yesterday."""
