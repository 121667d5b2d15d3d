"""The slice viewer: panes, colour maps and what the analyst does in them."""
