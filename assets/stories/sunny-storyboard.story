// A storyboard on a 2x3 grid, Letter pages: 6 panels, 3 characters, no speech, captions as shot notes.

title: Sunny's Hat - storyboard
style: storyboard sketch, pencil lines, muted colours
size: 768x512
seed: 7
layout: grid 2x3
page: Letter landscape
dpi: 120

character Sunny: characters/sunny.png
    description: a yellow triangle with a green top hat
character Red: characters/red.png
character Blue: characters/blue.png
---
Wide shot: [Sunny@center-third] standing in a windy meadow, holding on to a green top hat  # 1. Establishing: wind picks up.
A gust of wind carries a green top hat into the sky over the meadow [NC]  # 2. The hat flies away.
[Sunny@left] running across the meadow, [Red@right] watching in surprise  # 3. Sunny runs; Red sees.
  > Sunny: My hat!
[Blue@right-third] reaching up with a long arm to catch a green hat in a tree, [Sunny@left-third] looking up  # 4. Blue to the rescue.
Close-up of [Blue] placing the green hat back on [Sunny]  # 5. Hat returned.
  > Sunny: Thank you!
[Sunny@left-third], [Red@center-third] and [Blue@right-third] stand together in the meadow, smiling  # 6. All three, end card.
