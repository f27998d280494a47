// A short manga page in Japanese: panels read right to left, speech in vertical columns.

title: 赤いポストマン
style: black and white manga, screentone shading, clean ink lines
size: 768x1024
seed: 41
layout: comic
page: A5 portrait
margin: 8mm
gutter: 3mm
reading: right-to-left
bubbles: vertical

character Red: characters/red.png
    description: a small round red creature with big eyes
character Blue: characters/blue.png
---
[Red@right] knocks on a round wooden door in a quiet village street at dawn  # 朝いちばんの配達。
  > Red: おはようございます！お手紙です。
[Blue@left] opens the door a crack, sleepy, wearing a nightcap
  > Blue: こんな朝早くに？
Close-up of an envelope with a red heart seal [NC]
[Blue@left] holds a letter close to the eyes, [Red@right] waiting politely
  > Blue: 読めない……
  > Red: 逆さまですよ。
[Red@left-third] and [Blue@right-third] laugh together on the doorstep  # おしまい
