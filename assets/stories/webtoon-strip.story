// A webtoon: one vertical strip 800 px wide, exported whole and in slices of at most 1280 px.

title: Blue's Long Jump
style: bright webtoon colours, clean digital line art, soft shading
size: 1024x768
seed: 12
layout: webtoon
webtoon: 800x1280
gutter: 12mm

character Red: characters/red.png
character Blue: characters/blue.png
---
A tall cliff over a blue river, seen from far away, morning light [NC]  # Somewhere high above the river...
  height: 1100
[Blue@center-third] crouches at the edge of the cliff, ready to jump
  > Blue: I can make it. I know I can.
[Red@left] shouts from the riverbank below, waving both arms
  > Red: Blue! That is way too far!
[Blue@center-third] leaps into the air over the river, arms spread wide  # Whoosh!
  height: 1000
[Blue@right] lands on the far bank, [Red@left] cheering
  > Red: You did it!
  > Blue: Told you.
