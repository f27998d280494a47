// Red and Blue go fishing: a one-page comic, 8 panels, 2 characters.
// Render: instantcharacter-studio story render assets/stories/fishing-trip.story --out outputs/fishing-trip

title: Red and Blue Go Fishing
style: flat colour picture-book illustration, soft morning light, clean outlines
negative: text, watermark, blurry
size: 1024x768
seed: 2024
layout: comic
page: A4 portrait
dpi: 150
margin: 12mm
gutter: 4mm

character Red: characters/red.png
    scale: 0.85
    description: a small round red creature with big eyes and little feet
character Blue: characters/blue.png
    description: a tall blue block robot with a yellow antenna
---
[Red@left] and [Blue@right] walk down a wooden pier at dawn carrying fishing rods  # The first morning of summer.
  > Red: Today is the day. I can feel it.
  > Blue: You said that yesterday.

[Red] casts a fishing line far over a calm lake, splash in the distance  # Red casts first.
  > Red: Whee!

[Blue] sits very still on the edge of the pier holding a fishing rod, a bucket beside him  # Blue waits.

A calm lake at sunrise with a single red fishing float bobbing on the water [NC]  # Nothing happens for a long time.

[Red@left] yawning on the pier while [Blue@right] leans forward, rod bending sharply  # Then something bites!
  > Blue: Red! Red, wake up!

[Red@box:0.05,0.2,0.45,1] and [Blue@box:0.55,0.1,0.95,1] pull together on one bent fishing rod, water splashing  # Together they pull.
  > Red: Heave!
  > Blue: Ho!

[Red@left] and [Blue@right] stare at a tiny fish dangling from the line  # It is a very small fish.
  > Red: ...
  > Blue: It is a start.
  seed: 77

[Red@left] and [Blue@right] walk home along the lake shore at sunset, the empty bucket swinging  # They let it go and promise to come back tomorrow.
  > Red: Tomorrow, the big one.
